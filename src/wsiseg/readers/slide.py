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
import os
import struct
import threading
import zlib
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np
import tifffile
import zarr

from wsiseg.resolution import UNKNOWN, PixelSize, ResolutionError, tiff_pixel_size
from wsiseg.errors import SlideError

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}
UINT16_RULES = ("scale", "percentile")
STREAM_SEGMENT_BYTES = 64 * 2**20  # larger deflate/uncompressed strips are decoded row by row
MAX_SEGMENT_BYTES = 512 * 2**20  # larger tiles/strips that cannot be streamed are rejected
SAMPLE_SIDE = 2048  # pixels per side of the image used to compute percentiles
DEFLATE = {8, 32946}
MAX_DECODED_PIXELS = 1_000_000_000  # PNG/JPEG decoded whole: 3 GB as 8-bit RGB, 8 GB as 16-bit RGBA

log = logging.getLogger(__name__)

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


class SegmentReader(ZarrReader):
    """A single-page TIFF with interleaved samples: bands from its tiles/strips, decoded in parallel.

    Each segment (tile or strip) is read and decoded exactly once, in index
    order (row-major), and placed into a band buffer; a band is handed out
    as soon as all its rows are complete.  Memory: one band plus one row of
    segments plus the decode read-ahead (``buffer_bytes`` of compressed data).
    """

    def __init__(self, tif, path, page: tifffile.TiffPage, workers: int, buffer_bytes: int = 4 * 2**20):
        super().__init__(tif, path)
        self.page, self.workers, self.buffer_bytes = page, workers, buffer_bytes
        self._executor: ThreadPoolExecutor | None = None
        self.segment_rows = page.tilelength if page.is_tiled else min(page.rowsperstrip or page.imagelength, page.imagelength)

    def bands(self, rows: int) -> Iterator[Band]:
        """Full-width bands of ``rows`` rows, top to bottom.

        Segments are copied into the band being built as they arrive; only
        segments reaching below it (tall strips, tiles straddling a band
        boundary) are kept for the next band."""
        height, width = self.shape
        top, band = 0, self._band(0, rows)
        below: list[tuple[int, int, np.ndarray]] = []  # (y, x, pixels) of segments reaching past the band
        for segment, (_, _, sy, sx, _), seg_shape in self.page.segments(
            maxworkers=self.workers, buffersize=self.buffer_bytes
        ):
            while sy >= top + rows:  # segments arrive row-major: every one touching this band is here
                yield top, band
                top, band = top + rows, self._band(top + rows, rows)
                below = _paste(band, top, below)
            h, w = min(seg_shape[1], height - sy), min(seg_shape[2], width - sx)
            pixels = np.zeros((h, w, self.channels), self.dtype) if segment is None else segment[0, :h, :w]
            below += _paste(band, top, [(sy, sx, pixels)])
        while top < height:
            yield top, band
            top, band = top + rows, self._band(top + rows, rows)
            below = _paste(band, top, below)

    @property
    def tiled(self) -> bool:
        """Whether regions can be read by decoding just the tiles they touch."""
        return bool(self.page.is_tiled)

    @property
    def tile_side(self) -> int:
        """The larger side of a tile (0 when not tiled)."""
        return max(self.page.tilelength, self.page.tilewidth) if self.page.is_tiled else 0

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1``: only the tiles they touch are read and decoded, in parallel."""
        if not self.page.is_tiled:
            return super().region(y0, y1, x0, x1)
        out = np.empty((y1 - y0, x1 - x0, self.channels), self.dtype)
        for sy, sx, pixels in self.pieces(y0, y1, x0, x1):
            ty0, ty1 = max(sy, y0), min(sy + pixels.shape[0], y1)
            tx0, tx1 = max(sx, x0), min(sx + pixels.shape[1], x1)
            out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = pixels[ty0 - sy : ty1 - sy, tx0 - sx : tx1 - sx]
        return out

    def pieces(self, y0: int, y1: int, x0: int, x1: int) -> list[Piece]:
        """The tiles touching rows ``y0:y1``, columns ``x0:x1``, decoded in parallel, each clipped to the image only."""
        if not self.page.is_tiled:
            return super().pieces(y0, y1, x0, x1)
        page, (height, width) = self.page, self.shape
        th, tw = page.tilelength, page.tilewidth
        across = -(-page.imagewidth // tw)
        indices = [r * across + c for r in range(y0 // th, -(-y1 // th)) for c in range(x0 // tw, -(-x1 // tw))]
        offsets, counts = [page.dataoffsets[i] for i in indices], [page.databytecounts[i] for i in indices]
        encoded = list(page.parent.filehandle.read_segments(offsets, counts, indices, sort=True))
        options = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader, "_fullsize": True}
        out = []
        for segment, (_, _, sy, sx, _), _ in self._pool().map(lambda item: page.decode(*item, **options), encoded):
            h, w = min(th, height - sy), min(tw, width - sx)
            out.append((sy, sx, np.zeros((h, w, self.channels), self.dtype) if segment is None else segment[0, :h, :w]))
        return out

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="tiff-decode")
        return self._executor

    def close(self) -> None:
        """Stop the decoder threads."""
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def _band(self, top: int, rows: int) -> np.ndarray:
        return np.empty((max(0, min(rows, self.shape[0] - top)), self.shape[1], self.channels), self.dtype)


def _paste(band: np.ndarray, top: int, segments: list[tuple[int, int, np.ndarray]]) -> list[tuple[int, int, np.ndarray]]:
    """Copy the parts of ``segments`` (y, x, pixels) overlapping ``band`` (image rows from ``top``); return those reaching below it."""
    bottom = top + band.shape[0]
    for y, x, pixels in segments:
        y0, y1 = max(y, top), min(y + pixels.shape[0], bottom)
        if y1 > y0:
            band[y0 - top : y1 - top, x : x + pixels.shape[1]] = pixels[y0 - y : y1 - y]
    return [s for s in segments if s[0] + s[2].shape[0] > bottom]


class StripStreamReader(ZarrReader):
    """A single-page TIFF whose strips are too large to decode at once, stream-decoded row by row.

    Supports uncompressed and deflate (zlib) strips, with or without the
    horizontal-differencing predictor, interleaved or planar samples.
    Memory: one band plus a few MiB of decoder buffer.
    """

    def __init__(self, tif, path, page: tifffile.TiffPage):
        super().__init__(tif, path)
        self.page = page
        self.planes = page.samplesperpixel if page.planarconfig == 2 else 1
        self.dtype = page.dtype
        self.file_dtype = np.dtype(page.dtype).newbyteorder(tif.byteorder)

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` (decodes the strip from its start: slow, bounded memory)."""
        with open(self.path, "rb") as fh:
            streams = self._streams(fh)
            for start in range(0, y0, SAMPLE_SIDE):
                self._take(streams, min(SAMPLE_SIDE, y0 - start))
            return self._take(streams, y1 - y0)[:, x0:x1]

    def sample(self) -> np.ndarray:
        """The first rows of the image (a strip cannot be sampled sparsely without decoding it)."""
        return self.region(0, min(self.shape[0], SAMPLE_SIDE), 0, self.shape[1])

    def bands(self, rows: int) -> Iterator[Band]:
        """Full-width bands of ``rows`` rows, top to bottom."""
        height = self.shape[0]
        with open(self.path, "rb") as fh:
            streams = self._streams(fh)
            for y0 in range(0, height, rows):
                yield y0, self._take(streams, min(rows, height - y0))

    def _streams(self, fh: BinaryIO) -> list["PlaneStream"]:
        page = self.page
        per_plane = len(page.dataoffsets) // self.planes
        samples = page.samplesperpixel // self.planes
        return [
            PlaneStream(self.path, fh, page, range(p * per_plane, (p + 1) * per_plane), samples, self.file_dtype)
            for p in range(self.planes)
        ]

    @staticmethod
    def _take(streams: list["PlaneStream"], n: int) -> np.ndarray:
        parts = [stream.take(n) for stream in streams]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


class PlaneStream:
    """Consecutive rows of one sample plane, decoded from its strips on demand."""

    def __init__(self, path: Path, fh: BinaryIO, page: tifffile.TiffPage, strips: range, samples: int, file_dtype):
        self.path, self.page, self.samples, self.file_dtype = path, page, samples, file_dtype
        self.row_bytes = page.imagewidth * samples * file_dtype.itemsize
        self.pieces = (
            chunk
            for index in strips
            for chunk in _strip_bytes(fh, page.dataoffsets[index], page.databytecounts[index], page.compression)
        )
        self.pending = bytearray()

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` rows as (n, W, samples) in native byte order."""
        size = n * self.row_bytes
        while len(self.pending) < size:
            piece = next(self.pieces, None)
            if piece is None:
                raise SlideError(f"{self.path}: strip data ends early (truncated file?)")
            self.pending += piece
        rows = np.frombuffer(bytes(self.pending[:size]), self.file_dtype).reshape(n, self.page.imagewidth, self.samples)
        del self.pending[:size]
        rows = rows.astype(self.file_dtype.newbyteorder("="))
        if self.page.predictor == 2:  # horizontal differencing: running sum along each row
            rows = np.cumsum(rows, axis=1, dtype=rows.dtype)
        return rows


def _strip_bytes(fh: BinaryIO, offset: int, count: int, compression: int, piece: int = 4 * 2**20) -> Iterator[bytes]:
    """Decoded bytes of one strip, produced at most ``piece`` at a time (deflate or uncompressed)."""
    inflate = zlib.decompressobj() if compression in DEFLATE else None
    left = count
    while left > 0:
        fh.seek(offset + count - left)
        data = fh.read(min(piece, left))
        if not data:
            return
        left -= len(data)
        if inflate is None:
            yield data
            continue
        while True:  # bounded output per call; the rest waits in unconsumed_tail
            out = inflate.decompress(data, piece)
            if out:
                yield out
            data = inflate.unconsumed_tail
            if not data and len(out) < piece:
                break
    if inflate is not None:
        yield inflate.flush()


# ---------------------------------------------------------------------------
# Opening


def _check_extent(path: Path, pages) -> None:
    """Fail early when tile/strip data points past the end of the file (a truncated download)."""
    size = path.stat().st_size
    for page in pages:
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
        if ends and max(ends) > size:
            raise SlideError(f"{path}: truncated file: image data ends at byte {max(ends):,} but the file has {size:,} bytes")


def _segment_bytes(page: tifffile.TiffPage) -> int:
    rows = page.tilelength if page.is_tiled else min(page.rowsperstrip or page.imagelength, page.imagelength)
    width = page.tilewidth if page.is_tiled else page.imagewidth
    samples = 1 if page.planarconfig == 2 else page.samplesperpixel
    return rows * width * samples * page.dtype.itemsize


def _check_segment_count(path: Path, pages) -> None:
    """Fail early when the header declares more pixels than the file has tiles/strips for (a corrupt or edited header)."""
    for page in pages:
        key = page if hasattr(page, "chunked") else page.keyframe
        expected = int(np.prod(key.chunked))
        found = len(page.dataoffsets)
        if found < expected:
            kind = "tiles" if key.is_tiled else "strips"
            size = f"{key.tilewidth}x{key.tilelength}" if key.is_tiled else f"{key.rowsperstrip or key.imagelength} rows"
            raise SlideError(
                f"{path}: the header declares {key.imagewidth}x{key.imagelength} px, which needs {expected} {kind} "
                f"of {size}, but the file lists only {found} (corrupt or edited TIFF header)"
            )


def open_tiff(path: Path, workers: int, max_segment_bytes: int) -> tuple[ZarrReader, tifffile.TiffFile]:
    """Pick the best reader for level 0 of the first series of the TIFF at ``path``."""
    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:  # tifffile raises many types for broken files
        raise SlideError(f"{path}: cannot read as TIFF ({type(err).__name__}: {err})") from None
    try:
        if not tif.series:
            raise SlideError(f"{path}: cannot read as TIFF (no image found: invalid header or page offsets)")
        level = tif.series[0].levels[0]
        page = level.keyframe
        if 0 in level.shape:
            raise SlideError(f"{path}: zero-size image {tuple(level.shape)}")
        if page.dtype is None:
            raise SlideError(f"{path}: unsupported TIFF pixel format ({page.bitspersample}-bit, sample format {page.sampleformat})")
        _check_extent(path, level.pages)
        _check_segment_count(path, level.pages)
        single = len(level.pages) == 1 and page.imagedepth == 1
        size, problem = _segment_bytes(page), _stream_problem(page, single)
        if size > STREAM_SEGMENT_BYTES and problem is None:
            return StripStreamReader(tif, path, page), tif
        if size > max_segment_bytes:
            raise SlideError(
                f"{path}: {'tiles' if page.is_tiled else 'strips'} of {size / 2**20:,.0f} MiB decoded each; {problem}, "
                "so reading them would need that much memory per segment. Re-save the slide tiled, "
                "e.g. `vips tiffsave in.tif out.tif --tile --pyramid --compression jpeg`."
            )
        if single and (page.planarconfig == 1 or page.samplesperpixel == 1):
            return SegmentReader(tif, path, page, workers), tif
        return ZarrReader(tif, path), tif
    except SlideError:
        tif.close()
        raise
    except Exception as err:
        tif.close()
        raise SlideError(f"{path}: cannot read as TIFF ({type(err).__name__}: {err})") from None


def _stream_problem(page: tifffile.TiffPage, single: bool) -> str | None:
    """Why the segments of ``page`` cannot be stream-decoded row by row, or None when they can."""
    if page.is_tiled or not single:
        return f"{'tiles' if page.is_tiled else 'strips in a multi-page layout'} are not streamed"
    if page.compression not in DEFLATE | {1}:
        return f"{page.compression.name} strips cannot be decoded piecewise (only deflate or uncompressed can)"
    if page.predictor not in (1, 2) or page.bitspersample not in (8, 16):
        return f"predictor {page.predictor} / {page.bitspersample}-bit samples cannot be decoded piecewise"
    return None


JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def declared_size(path: Path) -> tuple[str, int, int]:
    """``(format, width, height)`` that a PNG (IHDR) or JPEG (SOF marker) header declares, read without decoding.

    Raises :class:`SlideError` for a file that is neither, or whose header is cut short."""
    with open(path, "rb") as fh:
        head = fh.read(24)
        if head.startswith(PNG_SIGNATURE):
            if len(head) < 24 or head[12:16] != b"IHDR":
                raise SlideError(f"{path}: not a readable PNG image (no IHDR header)")
            width, height = struct.unpack(">II", head[16:24])
            return "PNG", width, height
        if not head.startswith(b"\xff\xd8"):
            raise SlideError(f"{path}: not a PNG or JPEG file (it starts with bytes {head[:8]!r})")
        fh.seek(2)
        while True:
            byte = fh.read(1)
            while byte == b"\xff":  # fill bytes before a marker
                marker = fh.read(1)
                if marker != b"\xff":
                    break
            else:
                raise SlideError(f"{path}: not a readable JPEG image (no frame header before the end of the file)")
            code = marker[0] if marker else -1
            if code == -1 or code == 0xD9:
                raise SlideError(f"{path}: not a readable JPEG image (no frame header before the end of the file)")
            if code == 0x01 or 0xD0 <= code <= 0xD8:  # markers without a length
                continue
            length_bytes = fh.read(2)
            if len(length_bytes) < 2:
                raise SlideError(f"{path}: not a readable JPEG image (header cut short)")
            (length,) = struct.unpack(">H", length_bytes)
            if length < 2:
                raise SlideError(f"{path}: not a readable JPEG image (segment length {length})")
            if code in JPEG_SOF:
                frame = fh.read(5)
                if len(frame) < 5:
                    raise SlideError(f"{path}: not a readable JPEG image (frame header cut short)")
                height, width = struct.unpack(">HH", frame[1:5])
                return "JPEG", width, height
            fh.seek(length - 2, os.SEEK_CUR)


def check_decoded_size(path: Path, max_decoded_pixels: int) -> None:
    """Refuse a PNG/JPEG whose header declares more than ``max_decoded_pixels`` pixels, before decoding it.

    Such images are decoded whole, so a small file declaring a huge image
    (a decompression bomb) would otherwise allocate gigabytes."""
    kind, width, height = declared_size(path)
    if width * height > max_decoded_pixels:
        raise SlideError(
            f"{path}: the {kind} header declares {width}x{height} px ({width * height:,} px), over the limit of "
            f"{max_decoded_pixels:,} px for images decoded whole in memory; if it is genuine and the machine "
            "has the memory, raise `convert.max_decoded_pixels` (CLI --max-decoded-pixels), or re-save it as a "
            "tiled TIFF, which is streamed (e.g. `vips tiffsave in.png out.tif --tile --pyramid`)"
        )


def open_raster(path: Path, max_decoded_pixels: int = MAX_DECODED_PIXELS) -> ArrayReader:
    """Decode a PNG/JPEG with imagecodecs, once its header's declared size is checked against ``max_decoded_pixels``."""
    import imagecodecs

    check_decoded_size(path, max_decoded_pixels)
    try:
        data = imagecodecs.imread(str(path))
    except Exception as err:
        raise SlideError(f"{path}: not a readable PNG/JPEG image ({type(err).__name__}: {err})") from None
    if data.ndim not in (2, 3) or 0 in data.shape:
        raise SlideError(f"{path}: unexpected image shape {data.shape}")
    return ArrayReader(data)


def open_reader(
    path: str | Path,
    workers: int | None = None,
    max_segment_bytes: int | None = None,
    max_decoded_pixels: int | None = None,
    reader: str = "auto",
) -> tuple[Reader, tifffile.TiffFile | None]:
    """A raw-pixel reader for any supported slide, and the TiffFile to close (None unless read by tifffile).

    ``reader`` picks the backend: ``tifffile``, ``openslide``, ``dicom``, or
    ``auto`` (per file, see :mod:`wsiseg.readers.registry`).  Strips over
    :data:`STREAM_SEGMENT_BYTES` decoded are streamed when their
    compression allows; other segments over ``max_segment_bytes`` (default
    :data:`MAX_SEGMENT_BYTES`) are rejected.  PNG/JPEG images declaring more
    than ``max_decoded_pixels`` (default :data:`MAX_DECODED_PIXELS`) are
    refused before decoding; TIFFs are streamed and not limited."""
    from wsiseg.readers.registry import open_backend

    return open_backend(
        path, reader, workers or default_workers(), max_segment_bytes or MAX_SEGMENT_BYTES, max_decoded_pixels or MAX_DECODED_PIXELS
    )


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
    if dtype == np.uint8 or dtype == bool:
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
        log.warning("%s: %d of %d sampled values are NaN or infinite; percentiles use the finite ones",
                    path, values.size - finite.size, values.size)
    low, high = (float(v) for v in np.percentile(finite, [lo, hi]))
    return IntensityMap("stretch", low, high if high > low else low + 1.0)


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
