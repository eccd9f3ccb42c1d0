"""Full-width row bands of a slide store, read top to bottom with every chunk decoded once.

Tiled inference reads overlapping bands (a 512-px tile row every 384 px): read
one by one, each band would decode the chunk row it shares with the previous
one again (benchmarks/journal/predict.md).  :class:`BandReader` keeps the
decoded rows of the pyramid level it reads from, channel-last, reads only the
chunk rows below them, and drops the rows above the current band.  Its bands
equal :meth:`wsiseg.store.slide.SlideStore.read_image` of the same box.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from wsiseg.store.chunks import read_region
from wsiseg.store.slide import SlideStore


class BandReader:
    """RGB bands (height, ``width``, 3) of ``store`` at ``downscale`` from model column ``x0``, requested with
    non-decreasing top rows."""

    def __init__(self, store: SlideStore, downscale: float, width: int, fill: int = 255, x0: int = 0):
        self.store, self.ds, self.width, self.fill = store, downscale, width, fill
        k = store.level_for(downscale)
        self.f, self.array = 2**k, store.levels[k]
        self.chunk = self.array.chunks[-2]
        left = int(round(x0 * downscale))  # level-0 column, as SlideStore.read_image
        self.col0 = int(math.floor(left / self.f))
        self.cols = int(math.ceil((left + width * downscale) / self.f)) - self.col0  # level columns a band spans
        self.top = 0  # level row of self.rows[0]
        self.rows = np.empty((0, self.cols, self.array.shape[0]), np.uint8)
        self._spare: np.ndarray | None = None  # the buffer before self.rows': the next rows go there

    def read(self, y: int, height: int) -> np.ndarray:
        """The band of ``height`` model rows from model row ``y`` (level-0 row round(y * downscale))."""
        y0 = int(round(y * self.ds))
        ly0 = int(math.floor(y0 / self.f))
        ly1 = int(math.ceil((y0 + height * self.ds) / self.f))
        if ly0 < self.top:
            raise ValueError(f"bands must be read top to bottom (level row {ly0} after {self.top})")
        self.rows, self.top = self.rows[ly0 - self.top :], ly0  # rows above the band are done with
        cached = self.top + len(self.rows)
        if ly1 > cached:  # whole chunk rows below the cached ones: each chunk decoded once
            end = -(-ly1 // self.chunk) * self.chunk
            rows = self._buffer(end - self.top)
            rows[: len(self.rows)] = self.rows  # the rows kept; the new ones decoded straight into place
            read_region(
                self.array, cached, end, self.col0, self.col0 + self.cols, self.fill, out=rows[len(self.rows) :]
            )
            self.rows = rows
        block = self.rows[ly0 - self.top : ly1 - self.top]
        if block.shape[:2] != (height, self.width):
            block = cv2.resize(block, (self.width, height), interpolation=cv2.INTER_AREA)
            if block.ndim == 2:
                block = block[:, :, None]
        return block

    def _buffer(self, count: int) -> np.ndarray:
        """``count`` rows to fill: two buffers take turns (the bands handed out before the last one are
        done with), so tiled reading reuses the same memory instead of new, zeroed pages per band."""
        spare, self._spare = self._spare, (self.rows.base if self.rows.base is not None else self.rows)
        if spare is None or len(spare) < count:
            spare = np.empty((count, self.cols, self.rows.shape[2]), np.uint8)
        return spare[:count]
