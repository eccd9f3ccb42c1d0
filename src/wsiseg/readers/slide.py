"""Read source slides (TIFF/BigTIFF/OME-TIFF/SVS, PNG/JPEG) in bounded memory.

Every read comes back as uint8 ``(h, w, 3)`` RGB whatever the file's layout:
``(H,W,3)``, planar ``(3,H,W)``, HuBMAP's ``(1,1,3,H,W)``, grayscale ``(H,W)``
or RGBA (alpha dropped).  Files with other channel counts need ``channels``
(three channel indices).  Pixel types other than uint8 are mapped by the
``uint16`` rule: ``scale`` divides uint16 by 257 (the full range onto 0..255);
``percentile`` stretches ``percentiles`` (low, high), computed on the
smallest pyramid level or a sparse sample of level 0, onto 0..255.

Level 0 is read by regions (:meth:`SourceSlide.read`) or streamed in
full-width row bands (:meth:`SourceSlide.bands`):

* single-page tiled TIFFs with interleaved samples (the common WSI case)
  read a region by decoding just the tiles it touches, in a thread pool
  (:attr:`SourceSlide.tiled`: convert then works by square blocks);
* single-page TIFFs with interleaved samples stream bands by decoding
  their tiles or strips once each, in a thread pool, in file index order;
* strips over 64 MiB decoded (e.g. a whole slide in one strip) are
  stream-decoded row by row when uncompressed or deflate-compressed; other
  tiles/strips over 512 MiB are rejected with a clear error (LZW, JPEG, ...
  cannot be decoded piecewise);
* every other layout (planar, multi-page OME-TIFF) is read through
  tifffile's zarr interface one band at a time;
* PNG/JPEG are decoded whole with imagecodecs, so they suit images up to a
  few gigabytes decoded: the size their header declares is checked against
  ``max_decoded_pixels`` before decoding (a decompression bomb is refused).

Float pixels that are NaN or infinite become 0 (and are counted:
:attr:`IntensityMap.nonfinite`); percentiles are taken over finite values.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import tifffile

from wsiseg.errors import SlideError
from wsiseg.readers.base import Band, Piece, guarded
from wsiseg.readers.registry import open_reader
from wsiseg.resolution import PixelSize

UINT16_RULES = ("scale", "percentile")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Pixel mapping


def channel_plan(path: Path, count: int, channels: Sequence[int] | None, rgba: bool) -> list[int]:
    """Indices of the three channels to keep (grayscale is repeated)."""
    if channels is not None:
        channels = [int(c) for c in channels]
        if len(channels) != 3 or any(c < 0 or c >= count for c in channels):
            raise SlideError(f"{path}: channels {channels} must be three indices below the image's {count} channels")
        return channels
    if count in (1, 2):  # gray, gray + alpha
        return [0, 0, 0]
    if count == 3 or (count == 4 and rgba):
        return [0, 1, 2]
    raise SlideError(
        f"{path}: {count} channels; only grayscale, RGB and RGBA are converted as they are. "
        "Select three with `channels: [i, j, k]` (config convert.channels, CLI --channels)."
    )


class IntensityMap:
    """Maps pixel values to uint8: a plain cast (uint8), ``scale`` (uint16 / 257) or a linear ``stretch``.

    A ``stretch`` maps NaN and infinite values to 0 and counts the pixels
    holding one in :attr:`nonfinite` (over every block mapped so far)."""

    def __init__(self, kind: str, low: float = 0.0, high: float = 255.0):
        self.kind, self.low, self.high = kind, low, high
        self.nonfinite = 0
        self._lock = threading.Lock()

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if block.dtype == bool:
            return block.astype(np.uint8) * 255
        if self.kind == "cast":
            return block
        if self.kind == "scale":
            return (block // 257).astype(np.uint8)  # the full uint16 range onto 0..255
        scaled = (block.astype(np.float32) - self.low) * (255.0 / (self.high - self.low))
        out = np.clip(scaled + 0.5, 0, 255)
        if np.issubdtype(block.dtype, np.floating):
            bad = ~np.isfinite(block)
            if bad.any():
                out[bad] = 0
                with self._lock:
                    self.nonfinite += int(np.count_nonzero(bad.any(axis=-1) if bad.ndim == 3 else bad))
        return out.astype(np.uint8)

    def __repr__(self) -> str:
        return f"IntensityMap({self.kind!r}, {self.low:g}, {self.high:g})"


def intensity_map(path: Path, dtype: np.dtype, rule: str, percentiles: Sequence[float], sample) -> IntensityMap:
    """The uint8 mapping for pixels of ``dtype`` under ``rule`` (``sample()`` gives pixels for percentiles)."""
    if rule not in UINT16_RULES:
        raise SlideError(f"{path}: unknown uint16 rule {rule!r}; expected one of {UINT16_RULES}")
    if dtype == np.uint8 or dtype == np.bool_:
        return IntensityMap("cast")
    if rule == "scale":
        if dtype != np.uint16:
            raise SlideError(f"{path}: pixel type {dtype} has no fixed scale to uint8; use `uint16: percentile`")
        return IntensityMap("scale")
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise SlideError(f"{path}: unsupported pixel type {dtype}")
    lo, hi = sorted(float(p) for p in percentiles)
    values = np.asarray(sample(), dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise SlideError(
            f"{path}: no finite pixel value (all {values.size:,} values sampled for `uint16: percentile` are NaN or infinite)"
        )
    if finite.size < values.size:
        log.warning(
            "%s: %d of %d sampled values are NaN or infinite; percentiles use the finite ones",
            path,
            values.size - finite.size,
            values.size,
        )
    low, high = (float(v) for v in np.percentile(finite, [lo, hi]))
    return IntensityMap("stretch", low, high if high > low else low + 1.0)


# ---------------------------------------------------------------------------


class SourceSlide:
    """Level 0 of a source image, read as uint8 RGB by regions or full-width row bands.

    ``uint16``: ``scale`` (divide by 257) or ``percentile`` (stretch the
    ``percentiles`` of a low-resolution sample onto 0..255; also accepts
    other integer and float types).  ``channels``: three channel indices to
    use as R, G, B (required for images with more than 3 channels, RGBA
    aside).  ``workers``: decoder threads (default: all CPUs available).
    ``max_decoded_pixels``: the largest PNG/JPEG (decoded whole) accepted.
    ``pixel_size``: level 0's physical pixel size as the file states it
    (:mod:`wsiseg.resolution`; unknown for PNG/JPEG and bare TIFFs).
    ``reader``: the backend (``auto``, ``tifffile``, ``openslide``, ``dicom``).
    """

    def __init__(
        self,
        path: str | Path,
        uint16: str = "scale",
        percentiles: Sequence[float] = (0.5, 99.5),
        channels: Sequence[int] | None = None,
        workers: int | None = None,
        max_segment_bytes: int | None = None,
        max_decoded_pixels: int | None = None,
        reader: str = "auto",
    ):
        self.path = Path(path)
        self.reader, self._tif = open_reader(self.path, workers, max_segment_bytes, max_decoded_pixels, reader)
        rgba = self._tif is None or self._tif.series[0].keyframe.photometric == tifffile.PHOTOMETRIC.RGB
        try:
            self.height, self.width = (int(v) for v in self.reader.shape)
            if self.height == 0 or self.width == 0:
                raise SlideError(f"{self.path}: zero-size image {self.reader.shape}")
            self.channels = self.reader.channels
            self._keep = channel_plan(self.path, self.channels, channels, rgba)
            self.intensity = intensity_map(self.path, np.dtype(self.reader.dtype), uint16, percentiles, self._sample)
            self.pixel_size: PixelSize = self.reader.pixel_size
        except Exception:
            self.close()
            raise

    def _sample(self) -> np.ndarray:
        return self.reader.sample()[:, :, sorted(set(self._keep))]

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of level 0."""
        return self.height, self.width

    @property
    def tiled(self) -> bool:
        """Whether any region is cheap to read (a tiled TIFF): convert then works block by block."""
        return bool(getattr(self.reader, "tiled", False))

    @property
    def tile_side(self) -> int:
        """The larger side of the file's tiles (0 when not tiled)."""
        return int(getattr(self.reader, "tile_side", 0))

    @property
    def as_decoded(self) -> bool:
        """Whether :meth:`rgb` returns the decoded pixels unchanged (uint8 RGB, no channel pick or intensity mapping)."""
        return self.intensity.kind == "cast" and self._keep == [0, 1, 2] and self.channels == 3

    @property
    def dtype(self) -> np.dtype:
        """Pixel type stored in the file."""
        return np.dtype(self.reader.dtype)

    def read_raw(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1`` and columns ``x0:x1`` in the file's dtype as (h, w, channels)."""
        return np.asarray(self.reader.region(y0, y1, x0, x1))

    def raw_bands(self, rows: int) -> Iterator[Band]:
        """Full-width ``(y0, rows)`` bands in the file's dtype, top to bottom, each region decoded once."""
        return self.reader.bands(rows)

    def rgb(self, raw: np.ndarray) -> np.ndarray:
        """Map raw pixels (h, w, channels) to uint8 RGB (h, w, 3)."""
        picked = raw if self._keep == [0, 1, 2] and raw.shape[2] == 3 else raw[:, :, self._keep]
        return np.ascontiguousarray(self.intensity(picked))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1`` and columns ``x0:x1`` as uint8 RGB (h, w, 3); a decoding failure names the file."""
        with self._decoding(y0, y1, x0, x1):
            raw = self.read_raw(y0, y1, x0, x1)
        return self.rgb(raw)

    def read_pieces(self, y0: int, y1: int, x0: int, x1: int) -> list[Piece]:
        """The decoded tiles touching rows ``y0:y1``, columns ``x0:x1`` (one piece when not tiled) as uint8 RGB
        ``(y, x, pixels)``, not pasted together: tiles that match the output chunks are written without a copy."""
        with self._decoding(y0, y1, x0, x1):
            pieces = self.reader.pieces(y0, y1, x0, x1)
        return [(y, x, self.rgb(pixels)) for y, x, pixels in pieces]

    @contextmanager
    def _decoding(self, y0: int, y1: int, x0: int, x1: int) -> Iterator[None]:
        """Raise a decoding failure (codec errors come in many types) as :class:`SlideError` naming the file."""
        try:
            yield
        except SlideError:
            raise
        except Exception as err:
            raise SlideError(
                f"{self.path}: cannot decode rows {y0}:{y1}, columns {x0}:{x1} ({type(err).__name__}: {err})"
            ) from None

    def bands(self, rows: int) -> Iterator[Band]:
        """Full-width uint8 RGB bands of ``rows`` rows, top to bottom."""
        for y0, raw in guarded(self.raw_bands(rows), self.path):
            yield y0, self.rgb(raw)

    def close(self) -> None:
        """Release the open file and the decoder threads."""
        self.reader.close()
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> "SourceSlide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
