"""Where predict's tiles lie: the tile grid of one slide at the model's resolution, tissue-filtered, cut into
vertical strips and read in batches of tiles per tile row.
"""

from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np

from wsiseg.config.params import PredictParams
from wsiseg.imaging.tissue import TissueMap
from wsiseg.patches import grid_positions
from wsiseg.store.bands import BandReader
from wsiseg.store.slide import SlideStore

log = logging.getLogger(__name__)


class TilePlan:
    """Tile grid of one slide at the model resolution, with tissue filtering.

    When tissue detection keeps fewer than ``tissue_fallback`` of the tiles
    (none at all, typically: a method that does not suit the slide, such as
    saturation on a grayscale fluorescence image), it is not trusted: every
    tile is predicted (``fallback``) and a warning logged."""

    def __init__(self, store: SlideStore, downscale: float, params: PredictParams):
        self.store, self.downscale, self.params = store, downscale, params
        self.tile = params.tile
        self.height, self.width = store.dims(downscale)
        self.ys = grid_positions(self.height, self.tile, self.tile - params.overlap)
        self.xs = grid_positions(self.width, self.tile, self.tile - params.overlap)
        self.tissue = TissueMap(store, params.tissue_saturation, method=params.tissue_method)
        span = int(math.ceil(self.tile * self.downscale))
        self.keep = np.array(
            [
                [
                    self.tissue.fraction(int(y * self.downscale), int(x * self.downscale), span, span)
                    >= params.min_tissue
                    for x in self.xs
                ]
                for y in self.ys
            ]
        )
        self.total = int(self.keep.size)
        kept = int(self.keep.sum())
        self.fallback = kept < params.tissue_fallback * self.total
        if self.fallback:
            log.warning(
                "predict %s: tissue detection (%s) kept %d of %d tiles (tissue %.2f%% of the slide, below "
                "predict.tissue_fallback %g): it does not suit this slide, predicting every tile instead; "
                "set predict.tissue_method (e.g. fluorescence for bright-on-dark images) to skip background",
                store.slide_id,
                self.tissue.method,
                kept,
                self.total,
                100 * self.tissue.share,
                params.tissue_fallback,
            )
            self.keep[:] = True
        self.skipped = self.total - int(self.keep.sum())

    def strips(self) -> list[tuple[int, int]]:
        """Column ranges [b0, b1) of the model grid predicted one after the other.

        Slides wider than 1.5 ``params.strip`` go in strips of that width (rounded to a chunk
        multiple), so no buffer grows with the slide width; only at integer downscales of 1 or
        more, where every strip border is a chunk corner of the stores at the levels written."""
        chunk = self.params.chunk
        width = max(chunk, self.params.strip // chunk * chunk)
        if not float(self.downscale).is_integer() or self.width <= 1.5 * width:
            return [(0, self.width)]
        return [(b, min(self.width, b + width)) for b in range(0, self.width, width)]

    def strip_tiles(self, b0: int, b1: int) -> list[int]:
        """x positions of the tiles that cover model columns [b0 - 1, b1]: the strip and one column of context."""
        return [x for x in self.xs if self._covers(x, b0, b1)]

    def row_tiles(self, r: int, b0: int, b1: int) -> list[int]:
        """x positions of the tiles of tile row ``r`` to predict in strip [b0, b1)."""
        return [x for x, keep in zip(self.xs, self.keep[r]) if keep and self._covers(x, b0, b1)]

    def _covers(self, x: int, b0: int, b1: int) -> bool:
        """Whether the tile at ``x`` covers part of model columns [b0 - 1, b1]."""
        return x <= b1 and x + self.tile > b0 - 1

    def info(self) -> dict:
        """Tissue detection summary for the prediction store's attributes."""
        return {
            "method": self.tissue.method,
            "requested": self.tissue.requested,
            "share": round(self.tissue.share, 6),
            "tiles_skipped": self.skipped,
            "tiles_total": self.total,
            "fallback": bool(self.fallback),
        }

    def batches(self, b0: int, b1: int) -> Iterator[tuple[int, list[int], list[np.ndarray] | None]]:
        """Per tile row of strip [b0, b1): (row, xs, uint8 tiles) batches, then (row, [], None) when the row is read.

        The tiles are (h, w, 3) views of the row's band, valid until the next row is read."""
        cover = self.strip_tiles(b0, b1)
        left = min(cover)
        bands = BandReader(self.store, self.downscale, max(cover) + self.tile - left, x0=left)
        for r, y in enumerate(self.ys):
            todo = self.row_tiles(r, b0, b1)
            if todo:  # one read per tile row, the rows it shares with the previous one kept: every chunk decoded once
                band = bands.read(y, self.tile)
            for b in range(0, len(todo), self.params.batch_size):
                xs = todo[b : b + self.params.batch_size]
                yield r, xs, [band[:, x - left : x - left + self.tile] for x in xs]
            yield r, [], None
