"""What every slide reader is: the :class:`Reader` interface (level 0 as regions and row bands, a pyramid
when the file has one) and the array/zarr readers the backends build on.

This module imports nothing of its sibling modules: the backends (``tiff``, ``raster``, ``openslide``,
``dicom``) import it, and :mod:`wsiseg.readers.registry` picks among them.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

import numpy as np
import tifffile
import zarr

from wsiseg.errors import SlideError
from wsiseg.resolution import UNKNOWN, PixelSize, ResolutionError, tiff_pixel_size

SAMPLE_SIDE = 2048  # pixels per side of the image used to compute percentiles

Band = tuple[int, np.ndarray]  # (y0, (h, W, channels) rows)
Piece = tuple[int, int, np.ndarray]  # (y, x, (h, w, channels) pixels) of a decoded tile or region


def default_workers() -> int:
    """Decoder threads: the CPUs this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------
# Readers: raw pixels in the file's dtype, (h, w, channels)


class Reader(ABC):
    """Base of the readers: ``region`` (h, w, channels) in the file's dtype, and ``pieces`` built on it.

    ``pixel_size`` is level 0's physical pixel size as the file states it
    (:data:`~wsiseg.resolution.UNKNOWN` when it states none); each backend
    sets it from its own metadata."""

    pixel_size: PixelSize = UNKNOWN

    @abstractmethod
    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` as (h, w, channels)."""

    def pieces(self, y0: int, y1: int, x0: int, x1: int) -> list[Piece]:
        """Rows ``y0:y1``, columns ``x0:x1`` as one piece ``(y0, x0, pixels)`` (tiled readers: one per tile)."""
        return [(y0, x0, self.region(y0, y1, x0, x1))]


class PyramidReader(Reader):
    """A backend with pyramid levels (OpenSlide, DICOM WSI): ``levels`` [(h, w)] finest first and
    ``_read(y0, y1, x0, x1, level)`` give the bands and the intensity sample."""

    levels: list[tuple[int, int]]

    @abstractmethod
    def _read(self, y0: int, y1: int, x0: int, x1: int, level: int = 0) -> np.ndarray:
        """Rows/columns of pyramid level ``level`` (coordinates in its pixels) as (h, w, channels)."""

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` of level 0 as (h, w, channels)."""
        return self._read(y0, y1, x0, x1)

    def bands(self, rows: int) -> Iterator[Band]:
        """Full-width bands of ``rows`` rows, top to bottom."""
        height, width = self.shape
        for y0 in range(0, height, rows):
            yield y0, self.region(y0, min(height, y0 + rows), 0, width)

    def sample(self) -> np.ndarray:
        """The smallest pyramid level if small enough, else a sparse grid of level-0 windows."""
        h, w = self.levels[-1]
        if len(self.levels) > 1 and max(h, w) <= 4 * SAMPLE_SIDE:
            return self._read(0, h, 0, w, level=len(self.levels) - 1)
        return grid_sample(self.region, self.shape)


class ArrayReader(Reader):
    """An image decoded into memory (PNG/JPEG)."""

    def __init__(self, data: np.ndarray):
        self.data = data if data.ndim == 3 else data[:, :, None]
        self.shape = self.data.shape[:2]
        self.channels = self.data.shape[2]
        self.dtype = self.data.dtype

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1``."""
        return self.data[y0:y1, x0:x1]

    def bands(self, rows: int) -> Iterator[Band]:
        """Full-width bands of ``rows`` rows, top to bottom."""
        for y0 in range(0, self.shape[0], rows):
            yield y0, self.data[y0 : y0 + rows]

    def sample(self) -> np.ndarray:
        """A sparse grid of pixels for intensity statistics."""
        step = max(1, max(self.shape) // SAMPLE_SIDE)
        return self.data[::step, ::step]

    def close(self) -> None:
        """Nothing to release."""


class ZarrReader(Reader):
    """Level 0 of a TIFF series through tifffile's zarr store (any layout tifffile knows)."""

    def __init__(self, tif: tifffile.TiffFile, path: Path):
        series = tif.series[0]
        level = series.levels[0]
        self.path, self.series = path, series
        self.axes, shape = level.axes, tuple(level.shape)
        self.array = zarr.open_array(tif.aszarr(series=0, level=0), mode="r")
        if tuple(self.array.shape) != shape:
            raise SlideError(f"{path}: inconsistent TIFF shape {self.array.shape} vs {shape}")
        if "Y" not in self.axes or "X" not in self.axes:
            raise SlideError(f"{path}: no spatial Y/X axes in TIFF layout {self.axes!r}")
        extra = [a for a in self.axes if a not in "YX" and shape[self.axes.index(a)] > 1]
        if len(extra) > 1:
            raise SlideError(f"{path}: cannot interpret TIFF layout {self.axes!r} with shape {shape}")
        self.channel_axis = extra[0] if extra else None
        self.shape = shape[self.axes.index("Y")], shape[self.axes.index("X")]
        self.channels = shape[self.axes.index(self.channel_axis)] if self.channel_axis else 1
        self.dtype = self.array.dtype
        try:
            self.pixel_size = tiff_pixel_size(tif, str(path))
        except ResolutionError as err:  # a sample-sheet mpp may still override it (resolution.choose)
            self.pixel_size = PixelSize(None, "TIFF metadata", problem=str(err))

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` as (h, w, channels)."""
        return self._read(self.array, self.axes, y0, y1, x0, x1)

    def _read(self, array, axes: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        index: list[slice | int] = []
        for axis in axes:
            if axis == "Y":
                index.append(slice(y0, y1))
            elif axis == "X":
                index.append(slice(x0, x1))
            else:
                index.append(slice(None) if axis == self.channel_axis else 0)
        block = np.asarray(array[tuple(index)])
        kept = [a for a in axes if a in "YX" or a == self.channel_axis]
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(self.channel_axis)] if self.channel_axis else [])
        block = np.transpose(block, order)
        return block if block.ndim == 3 else block[:, :, None]

    def bands(self, rows: int) -> Iterator[Band]:
        """Full-width bands of ``rows`` rows, top to bottom."""
        for y0 in range(0, self.shape[0], rows):
            yield y0, self.region(y0, min(self.shape[0], y0 + rows), 0, self.shape[1])

    def sample(self) -> np.ndarray:
        """The smallest pyramid level if small enough, else a sparse grid of level-0 windows."""
        smallest = self.series.levels[-1]
        if len(self.series.levels) > 1 and max(smallest.shape[smallest.axes.index(a)] for a in "YX") <= 4 * SAMPLE_SIDE:
            array = zarr.open_array(self.series.aszarr(level=len(self.series.levels) - 1), mode="r")
            return self._read(array, smallest.axes, 0, None, 0, None)
        return grid_sample(self.region, self.shape)

    def close(self) -> None:
        """Nothing to release (the TiffFile is closed by the slide)."""


def grid_sample(region, shape: tuple[int, int], windows: int = 16, side: int = 128) -> np.ndarray:
    """Concatenate ``windows`` x ``windows`` small windows spread over the image."""
    height, width = shape
    ys = np.linspace(0, max(0, height - side), windows).astype(int)
    xs = np.linspace(0, max(0, width - side), windows).astype(int)
    tiles = [region(y, min(height, y + side), x, min(width, x + side)) for y in np.unique(ys) for x in np.unique(xs)]
    return np.concatenate([t.reshape(-1, t.shape[2]) for t in tiles])[:, None, :]


def guarded(bands: Iterator[Band], path: Path) -> Iterator[Band]:
    """``bands``, with a decoding failure (corrupt or truncated data) raised as :class:`SlideError` naming ``path``."""
    y0 = 0
    while True:
        try:
            y0, raw = next(bands)
        except StopIteration:
            return
        except SlideError:
            raise
        except Exception as err:  # codec errors come in many types
            raise SlideError(f"{path}: cannot decode the image below row {y0} ({type(err).__name__}: {err})") from None
        yield y0, raw
