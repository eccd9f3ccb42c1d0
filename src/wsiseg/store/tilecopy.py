"""Compact stores from tiled JPEG TIFFs without re-encoding level 0 (``convert.compression: jpeg``).

A compact store's chunks are plain JPEG files (:class:`wsiseg.store.codecs.PlanarJpeg`).  When the
slide's level 0 is a tiled TIFF page of 8-bit RGB (or YCbCr) JPEG tiles, interleaved, whose tiles
are exactly the store's chunks (``convert.chunk``, default 512, equal to the tile side), each
tile's JPEG bytes *are* a valid chunk: :func:`write_copied` writes them as they are (abbreviated
tile streams get the page's shared ``JPEGTables`` merged in, so every chunk is a complete JPEG
stream), so level 0 is bit-identical to tifffile's decode and costs no decoding or encoding.

The pyramid still needs pixels.  Level 1 comes straight from the tile bytes by libjpeg-turbo's
DCT-scaled decoding at 1/2 (simplejpeg, or OpenCV ``IMREAD_REDUCED_*_2``: the inverse DCT of each 8x8
block is computed at 4x4, cheaper than a full decode, though Huffman decoding still covers every
coefficient); levels 2.. are 2x2 means of level 1 as in every other store.  The DCT-scaled image is
an antialiased 2x reduction, not the exact 2x2 mean of level 0, but its difference from that mean on
real H&E is far smaller than the error of encoding level 1 at JPEG quality 90, so the stored level 1
is as close to the exact mean as the decode/re-encode path's (``benchmarks/convert_bench.py`` measures
both; ``benchmarks/README.md``, convert, and ``benchmarks/journal/convert.md``).  Levels 1.. are
encoded at ``convert.jpeg_quality``; level 0 keeps the scanner's own quality.

:func:`copy_plan` decides whether a slide qualifies and says why not; it also decodes a few
copied chunks the way any reader of the store will and compares them with tifffile's decode of
the same tiles, so a colour-space variant that would decode differently falls back to the
decode/re-encode path (logged) rather than storing wrong colours.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, nullcontext
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
import zarr

from wsiseg.errors import SlideError
from wsiseg.store.chunks import chunk_writers, create_level, direct_path, write_chunk_file
from wsiseg.store.codecs import PlanarJpeg
from wsiseg.store.pyramid import BlockPyramid, halve, halve_into, write_levels
from wsiseg.utils.logs import StepTimes, progress
from wsiseg.utils.prefetch import prefetch

log = logging.getLogger(__name__)

JPEG = 7  # TIFF Compression: new-style JPEG
RGB, YCBCR = 2, 6  # TIFF PhotometricInterpretation
SOI, EOI = b"\xff\xd8", b"\xff\xd9"
# APP14 "Adobe" marker with transform 0: libjpeg then reads 3 components as R, G, B (not YCbCr).  Put
# into RGB tiles that carry no colour-space marker (Aperio SVS), which tifffile decodes as RGB because
# the TIFF says so; a plain JPEG reader would otherwise convert them from YCbCr.
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
# 1/2-scale DCT decode to RGB (no EXIF orientation lookup: tifffile applies none either)
REDUCED_2 = cv2.IMREAD_REDUCED_GRAYSCALE_2 | cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
CHECKED_TILES = 4  # tiles decoded both ways before a slide is copied
INNER = 3  # levels 0..INNER are made inside each block of (chunk << INNER)² px, the levels above from level INNER
WRITERS = "waiting for the writer threads (tiles copied, decoded at 1/2, chunks encoded)"  # a step of the log


@dataclass
class TileCopy:
    """How to turn the tiles of a tiled JPEG TIFF page into complete JPEG chunk streams."""

    page: object  # tifffile.TiffPage
    path: Path  # the slide, for error messages
    prefix: bytes  # SOI [+ Adobe RGB marker] + the shared tables (no SOI/EOI), put before each tile's own markers

    def stream(self, tile: bytes) -> bytes:
        """The complete JPEG stream of one tile's bytes (which start with SOI)."""
        return self.prefix + tile[2:] if self.prefix != SOI and tile[:2] == SOI else tile

    @property
    def tile_shape(self) -> tuple[int, int]:
        return self.page.tilelength, self.page.tilewidth

    def read(self, indices: list[int]) -> dict[int, bytes]:
        """The raw bytes of tiles ``indices`` (a missing tile, 0 bytes, is left out)."""
        page = self.page
        present = [i for i in indices if page.databytecounts[i] > 0]
        offsets, counts = [page.dataoffsets[i] for i in present], [page.databytecounts[i] for i in present]
        return {i: data for data, i in page.parent.filehandle.read_segments(offsets, counts, present, sort=True)}


def copy_plan(source, chunk: int, codec) -> TileCopy | str:
    """A :class:`TileCopy` for ``source`` (a :class:`wsiseg.readers.slide.SourceSlide`) stored in ``chunk``² chunks
    with ``codec``, or the reason (a phrase) why its tiles cannot be copied."""
    if not isinstance(codec, PlanarJpeg):
        return "the store is not JPEG-compressed"
    page = getattr(source.reader, "page", None)
    if page is None or not getattr(source.reader, "tiled", False):
        return "the slide is not a single-page tiled TIFF read by tifffile"
    if page.compression != JPEG:
        return f"its tiles are {page.compression.name}-compressed, not JPEG"
    if page.photometric not in (RGB, YCBCR) or page.samplesperpixel != 3 or page.extrasamples:
        return f"JPEG tiles of photometric {page.photometric.name} with {page.samplesperpixel} samples are not RGB"
    if page.bitspersample != 8 or page.planarconfig != 1 or page.imagedepth != 1 or page.tiledepth != 1:
        return f"{page.bitspersample}-bit / planar config {page.planarconfig} / 3-D tiles are not plain RGB tiles"
    if page.jpegheader is not None:
        return "the tiles need a shared JPEG header (NDPI-style)"
    if (page.tilelength, page.tilewidth) != (chunk, chunk):
        return (
            f"its tiles are {page.tilewidth}x{page.tilelength} px, the store's chunks {chunk}x{chunk} (convert.chunk)"
        )
    if not source.as_decoded:
        return "its pixels are remapped (channels or intensity)"
    tables = page.jpegtables
    prefix = SOI
    if page.photometric == RGB and not page.is_jfif:
        prefix += ADOBE_RGB
    if tables is not None:
        tables = bytes(tables)
        if not (tables.startswith(SOI) and tables.endswith(EOI)):
            return "its JPEGTables are not a tables-only JPEG stream"
        prefix += tables[2:-2]
    plan = TileCopy(page, Path(source.path), prefix)
    return check(plan, codec) or plan


def check(plan: TileCopy, codec: PlanarJpeg) -> str | None:
    """None when a few copied tiles decode (as the store's readers decode them) exactly as tifffile decodes
    them, else what differs (the first tile's, in file order).  The tiles are checked in two threads."""
    page = plan.page
    present = [i for i, count in enumerate(page.databytecounts) if count > 0]
    if not present:
        return None  # nothing to copy: every chunk stays the fill value, as tifffile reads missing tiles
    picks = sorted({present[round(k * (len(present) - 1) / max(1, CHECKED_TILES - 1))] for k in range(CHECKED_TILES)})
    with ThreadPoolExecutor(2, thread_name_prefix="wsiseg-tile-check") as pool:
        problems = pool.map(lambda item: _check_tile(plan, codec, *item), plan.read(picks).items())
        return next((problem for problem in problems if problem), None)


def _check_tile(plan: TileCopy, codec: PlanarJpeg, index: int, data: bytes) -> str | None:
    """What differs between tifffile's decode of tile ``index`` (raw ``data``) and the store's readers' decode of
    its copied chunk, or its DCT-scaled 1/2 decode and its 2x2 mean; None when nothing does."""
    page = plan.page
    if not data.startswith(SOI):
        return f"tile {index} does not start with a JPEG SOI marker"
    stream = plan.stream(data)
    try:
        # (1, h, w, 3) full tile -> (h, w, 3)
        expected = page.decode(data, index, jpegtables=page.jpegtables, jpegheader=page.jpegheader, _fullsize=True)[0][
            0
        ]
        copied = codec.decode_rgb(stream)  # as the store's readers decode it (before splitting the planes)
        reduced = _half(plan, index, stream)
    except Exception as err:  # codec errors come in many types
        return f"tile {index} does not decode as a stand-alone JPEG stream ({type(err).__name__}: {err})"
    if copied.shape != expected.shape or not np.array_equal(copied, expected):
        diff = np.abs(copied.astype(int) - expected).max() if copied.shape == expected.shape else copied.shape
        return f"tile {index} decodes differently as a stand-alone JPEG stream (max difference {diff}: colour space?)"
    mean = halve(expected, "mean")
    if reduced.shape != mean.shape or np.abs(reduced.astype(int) - mean).mean() > 8:
        return f"the DCT-scaled decode of tile {index} does not match its 2x2 mean"
    return None


def _level1_chunk(
    plan: TileCopy,
    tiles: dict[int, bytes],
    places: list,
    folders: list,
    key1: str,
    crop,
    codec: PlanarJpeg,
    level2: np.ndarray | None,
) -> None:
    """Copy the (up to 2x2) tiles of one level-1 chunk to their level-0 chunk files and decode them at 1/2
    into that chunk; encode and write it; pool its pixels inside the image into ``level2`` (their place in
    the block's level 2, while they are in cache) unless None."""
    folder0, folder1 = folders
    chunk = plan.tile_shape[0]
    half = chunk // 2
    pixels = np.empty((chunk, chunk, 3), np.uint8)
    for index, key0, (r, c) in places:
        quarter = pixels[r * half : (r + 1) * half, c * half : (c + 1) * half]
        data = tiles.get(index)
        if data is None:  # a missing tile reads as 0s, the store's fill value
            quarter[:] = 0
            continue
        stream = plan.stream(data)
        write_chunk_file(folder0 / key0, stream)
        quarter[:] = _half(plan, index, stream)
    h, w = crop
    if h < chunk or w < chunk:  # outside the image (and its tiles): the fill value, as zarr pads edge chunks
        pixels[h:] = 0
        pixels[:, w:] = 0
    write_chunk_file(folder1 / key1, codec.encode_rgb(pixels))
    if level2 is not None:
        halve_into(pixels[:h, :w], level2, "mean")


def _half(plan: TileCopy, index: int, stream: bytes) -> np.ndarray:
    """Tile ``index`` (its complete ``stream``) at 1/2 scale: DCT-scaled (simplejpeg's TurboJPEG, faster than
    OpenCV's, see benchmarks/journal/convert.md; OpenCV for subsamplings TurboJPEG cannot name), or, for data
    libjpeg refuses in that mode (e.g. a truncated tile, which tifffile decodes padded), the 2x2 mean of its
    full decode."""
    h, w = plan.tile_shape
    try:
        half = simplejpeg.decode_jpeg(stream, "RGB", min_height=h // 2, min_width=w // 2)
        if half.shape[:2] == (h // 2, w // 2):
            return half
    except ValueError:  # strict: a warning (premature end of data) is an error too
        pass
    half = cv2.imdecode(np.frombuffer(stream, np.uint8), REDUCED_2)
    if half is not None:
        return half
    try:
        return halve(PlanarJpeg().decode(stream).transpose(1, 2, 0), "mean")
    except Exception as err:  # codec errors come in many types
        raise SlideError(f"{plan.path}: cannot decode JPEG tile {index} ({type(err).__name__}: {err})") from None


def _level0_only(plan: TileCopy, tiles: dict[int, bytes], places: list, folder: Path) -> None:
    for index, key0, _ in places:
        if index in tiles:
            write_chunk_file(folder / key0, plan.stream(tiles[index]))


def write_copied(
    root: zarr.Group,
    source,
    plan: TileCopy,
    levels: int,
    chunk: int,
    codec: PlanarJpeg,
    slide_id: str,
    workers: int,
    times: StepTimes | None = None,
) -> None:
    """Write the image pyramid of a slide whose JPEG tiles are copied as level 0 (see the module doc).

    Works by square blocks of ``chunk * 2**INNER`` px like :func:`wsiseg.convert.write_blocks`: the
    tiles of a block are read raw; each level-1 chunk (2x2 tiles) is one job in the writer threads:
    copy its tiles, decode them at 1/2, encode it, pool it into its place in the block's level 2 (while
    its pixels are in cache: half the time of pooling the block afterwards); levels 3..``inner`` are
    pooled from level 2 (``inner``: ``INNER``, or the top level of a slide with fewer levels); the levels above
    from each block's level ``inner`` (:class:`wsiseg.store.pyramid.BlockPyramid`)."""
    height, width = source.shape
    page = plan.page
    across = -(-page.imagewidth // chunk)
    inner = min(INNER, levels - 1)
    side = chunk << inner
    arrays, (h, w) = [], (height, width)
    for k in range(inner + 1):
        arrays.append(create_level(root, str(k), (3, h, w), chunk, codec))
        h, w = (h + 1) // 2, (w + 1) // 2
    folders = [direct_path(a) for a in arrays[:2]]
    if any(f is None for f in folders):
        raise ValueError(f"{root.store}: chunk files cannot be written directly")
    encode_key = arrays[0].metadata.encode_chunk_key
    corners = [
        (y, x, min(height, y + side), min(width, x + side))
        for y in range(0, height, side)
        for x in range(0, width, side)
    ]

    def tiles_of(y: int, x: int, y1: int, x1: int) -> list[int]:
        return [r * across + c for r in range(y // chunk, -(-y1 // chunk)) for c in range(x // chunk, -(-x1 // chunk))]

    blocks = prefetch((y, x, y1, x1, plan.read(tiles_of(y, x, y1, x1))) for y, x, y1, x1 in corners)
    h1, w1 = (height + 1) // 2, (width + 1) // 2

    def upper_levels(y: int, x: int, jobs: list[Future], block: np.ndarray | None) -> list[Future]:
        """Write a block's levels 2..inner once its level-1 jobs are done (they pooled level 2 into ``block``)
        and hand its level ``inner`` to the levels above; the pending writes."""
        with times.step(WRITERS):
            for job in jobs:
                job.result()
        with times.step("pooling the upper levels"):
            return write_levels(arrays, 2, y, x, block, executor, above)

    above = None  # levels inner+1.. built from the blocks' level inner, in memory
    if levels > inner + 1:  # (then inner = INNER >= 2: the blocks' level 2 and up are in memory)
        above = BlockPyramid(
            root, arrays[inner].shape, levels - inner - 1, chunk, codec, "mean", workers, first=inner + 1
        )
    times = times or StepTimes()
    with (
        closing(blocks),
        chunk_writers(workers, direct=False) as executor,
        above or nullcontext(),
    ):  # JPEG chunks: cached writes
        previous, pending = None, []  # the block whose levels 2.. are written while the next one's tiles decode
        waiting = times.waiting("waiting for tiles read", blocks)
        for y, x, y1, x1, tiles in progress(
            waiting, total=len(corners), desc=f"convert {slide_id}", unit="block", mininterval=10
        ):
            if inner == 0:
                places = [(i, encode_key((0, i // across, i % across)), None) for i in tiles_of(y, x, y1, x1)]
                _level0_only(plan, tiles, places, folders[0])
                continue
            jobs = []
            level2 = np.empty((-(-(y1 - y) // 4), -(-(x1 - x) // 4), 3), np.uint8) if inner > 1 else None
            for cy in range(y // 2, (y1 + 1) // 2, chunk):  # the level-1 chunks of the block
                for cx in range(x // 2, (x1 + 1) // 2, chunk):
                    ty, tx = 2 * cy // chunk, 2 * cx // chunk  # its top-left tile
                    places = [
                        ((ty + r) * across + tx + c, encode_key((0, ty + r, tx + c)), (r, c))
                        for r in range(2)
                        for c in range(2)
                        if (ty + r) * chunk < height and (tx + c) * chunk < width
                    ]
                    key1 = encode_key((0, cy // chunk, cx // chunk))
                    crop = (min(chunk, h1 - cy), min(chunk, w1 - cx))
                    place = None
                    if level2 is not None:  # its pixels pooled once more: their place in the block's level 2
                        y2, x2 = (cy - y // 2) // 2, (cx - x // 2) // 2
                        place = level2[y2 : y2 + -(-crop[0] // 2), x2 : x2 + -(-crop[1] // 2)]
                    jobs.append(executor.submit(_level1_chunk, plan, tiles, places, folders, key1, crop, codec, place))
            if previous is not None:
                with times.step(WRITERS):
                    for job in pending:  # two blocks' writes in flight at most
                        job.result()
                pending = upper_levels(*previous)
            previous = (y, x, jobs, level2)
        if previous is not None:
            pending += upper_levels(*previous)
        with times.step(WRITERS):
            for job in pending:
                job.result()
