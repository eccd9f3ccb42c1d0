"""Slides read through OpenSlide: Hamamatsu NDPI/VMS, 3DHistech MRXS, Leica SCN, Ventana BIF,
Philips TIFF, Sakura SVSLIDE, Trestle, and the TIFFs OpenSlide reads (Aperio SVS, generic tiled TIFF).

OpenSlide (``openslide-python`` with the ``openslide-bin`` wheel, no system
library) returns un-premultiplied RGBA; areas the scanner did not image are
transparent.  Following OpenSlide's own convention they are composited on
white, so every read is uint8 RGB.  Regions are read tile by tile in a
thread pool (OpenSlide is thread-safe and releases the GIL while decoding):
memory is that of the region asked for, whatever the slide's size.
"""

from __future__ import annotations

import ctypes
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from wsiseg.errors import SlideError
from wsiseg.readers.base import Piece, PyramidReader
from wsiseg.resolution import UNKNOWN, PixelSize, stated

TILE = 1024  # side of the pieces a region is read in (OpenSlide's own tiles are 240-1024 px)


@functools.cache
def _detect_vendor():
    """``openslide_detect_vendor`` of the openslide-bin wheel's library through ctypes, or None without the wheel.

    Importing ``openslide`` is slow (it imports Pillow), loading the library alone is not, and auto
    detection runs for every TIFF converted (benchmarks/journal/convert.md).  A function object of its own
    (``lib[name]``, not ``lib.name``), so openslide-python's argument and result types on the shared one do
    not apply."""
    try:
        import openslide_bin

        function = openslide_bin.libopenslide1["openslide_detect_vendor"]
    except (ImportError, AttributeError, OSError):  # no wheel (a system OpenSlide): openslide-python finds it
        return None
    function.argtypes, function.restype = [ctypes.c_char_p], ctypes.c_char_p
    return function


def detect(path: Path) -> str | None:
    """The vendor OpenSlide recognises ``path`` as (``aperio``, ``hamamatsu``, ``mirax``, ``generic-tiff``, ...),
    or None when it does not (or OpenSlide is not installed)."""
    function = _detect_vendor()
    if function is not None:
        vendor = function(str(path).encode("utf-8") if os.name == "nt" else os.fsencode(path))
        return vendor.decode() if vendor else None
    try:
        import openslide
    except ImportError:  # pragma: no cover - openslide-python is a dependency
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # noqa: BLE001 - unreadable files: "not recognised"
        return None


def flatten(rgba: np.ndarray) -> np.ndarray:
    """RGB of un-premultiplied RGBA pixels composited on white (OpenSlide's convention for unscanned areas)."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16))
    return ((rgb + 127) // 255).astype(np.uint8)


class OpenSlideReader(PyramidReader):
    """Level 0 of a slide through OpenSlide as uint8 RGB (h, w, 3); see the module docstring.

    Also reports ``levels`` ((h, w) of each pyramid level), ``associated``
    (names of the label/macro/thumbnail images), ``vendor`` and
    ``pixel_size`` (from ``openslide.mpp-x``/``openslide.mpp-y``)."""

    channels = 3
    dtype = np.dtype(np.uint8)
    tiled = True

    def __init__(self, path: Path, workers: int = 1):
        import openslide

        if path.suffix.lower() == ".mrxs" and not path.with_suffix("").is_dir():
            raise SlideError(f"{path}: an MRXS slide needs its data folder {path.with_suffix('')} next to it")
        try:
            self.slide = openslide.OpenSlide(str(path))
        except Exception as err:  # noqa: BLE001 - OpenSlideError, OpenSlideUnsupportedFormatError
            raise SlideError(f"{path}: OpenSlide cannot read it ({type(err).__name__}: {err})") from None
        self.path, self.workers = path, workers
        props = self.slide.properties
        self.vendor = props.get("openslide.vendor", "unknown")
        self.levels = [(h, w) for w, h in self.slide.level_dimensions]
        self.shape = self.levels[0]
        self.associated = sorted(self.slide.associated_images)
        tile = props.get("openslide.level[0].tile-width")
        self.tile_side = int(tile) if tile and int(tile) > 0 else TILE
        self.pixel_size = _pixel_size(props, str(path))
        self._executor: ThreadPoolExecutor | None = None

    def _read(self, y0: int, y1: int, x0: int, x1: int, level: int = 0) -> np.ndarray:
        """Rows/columns of ``level`` (coordinates in that level's pixels), composited on white."""
        scale = self.slide.level_downsamples[level]
        image = self.slide.read_region((int(x0 * scale), int(y0 * scale)), level, (x1 - x0, y1 - y0))
        return flatten(np.asarray(image))

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` as (h, w, 3), read by tiles in parallel."""
        pieces = self.pieces(y0, y1, x0, x1)
        if len(pieces) == 1:
            return pieces[0][2]
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for y, x, pixels in pieces:
            out[y - y0 : y - y0 + pixels.shape[0], x - x0 : x - x0 + pixels.shape[1]] = pixels
        return out

    def pieces(self, y0: int, y1: int, x0: int, x1: int) -> list[Piece]:
        """Rows ``y0:y1``, columns ``x0:x1`` as ``TILE``-aligned pieces read in parallel."""
        side = max(TILE, self.tile_side)
        cuts = [
            (y, min(y1, (y // side + 1) * side), x, min(x1, (x // side + 1) * side))
            for y in [y0, *range((y0 // side + 1) * side, y1, side)]
            for x in [x0, *range((x0 // side + 1) * side, x1, side)]
        ]
        if len(cuts) == 1:
            return [(y0, x0, self._read(y0, y1, x0, x1))]
        return list(self._pool().map(lambda c: (c[0], c[2], self._read(*c)), cuts))

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="openslide-read")
        return self._executor

    def close(self) -> None:
        """Close the slide and stop the reader threads."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
        self.slide.close()


def _pixel_size(props, where: str) -> PixelSize:
    """Level 0's pixel size from OpenSlide's ``openslide.mpp-x``/``mpp-y`` (micrometres); UNKNOWN when absent or 0."""
    x, y = (float(props.get(f"openslide.mpp-{axis}") or 0) for axis in "xy")
    return stated(x, y, "OpenSlide openslide.mpp-x/y", where) if x and y else UNKNOWN
