"""TIFF/BigTIFF/OME-TIFF/SVS read through tifffile in bounded memory.

Single-page tiled TIFFs with interleaved samples read a region by decoding just the tiles it touches;
single-page TIFFs stream full-width bands by decoding each tile or strip once, in file order; strips
over 64 MiB decoded are stream-decoded row by row when uncompressed or deflate-compressed, and other
segments over ``max_segment_bytes`` are refused; every other layout goes through tifffile's zarr
interface one band at a time.
"""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import tifffile

from wsiseg.errors import SlideError
from wsiseg.readers import limits
from wsiseg.readers.base import SAMPLE_SIDE, Band, Piece, ZarrReader

DEFLATE = {8, 32946}


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
        self.segment_rows = (
            page.tilelength if page.is_tiled else min(page.rowsperstrip or page.imagelength, page.imagelength)
        )

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


def _paste(
    band: np.ndarray, top: int, segments: list[tuple[int, int, np.ndarray]]
) -> list[tuple[int, int, np.ndarray]]:
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
            raise SlideError(
                f"{path}: truncated file: image data ends at byte {max(ends):,} but the file has {size:,} bytes"
            )


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
            size = (
                f"{key.tilewidth}x{key.tilelength}" if key.is_tiled else f"{key.rowsperstrip or key.imagelength} rows"
            )
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
            raise SlideError(
                f"{path}: unsupported TIFF pixel format ({page.bitspersample}-bit, sample format {page.sampleformat})"
            )
        _check_extent(path, level.pages)
        _check_segment_count(path, level.pages)
        single = len(level.pages) == 1 and page.imagedepth == 1
        size, problem = _segment_bytes(page), _stream_problem(page, single)
        if size > limits.STREAM_SEGMENT_BYTES and problem is None:
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
