"""Multiscale pyramids: level counts, 2x pooling (mean for images, max for labels), and the writers that build
every level on the fly from rows or blocks of level 0 (nothing is read back).
"""

from __future__ import annotations

import math
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import zarr

from wsiseg.store.chunks import (
    chunk_writers,
    create_level,
    direct_path,
    interleave,
    read_chunk,
    write_block,
    write_chunk,
)


def level_count(height: int, width: int, chunk: int) -> int:
    """Number of 2x pyramid levels until the top level fits in one chunk."""
    return 1 + max(0, math.ceil(math.log2(max(height, width) / chunk))) if max(height, width) > chunk else 1


def _pool(block: np.ndarray, how: str) -> np.ndarray:
    c, h, w = block.shape
    if h % 2 or w % 2:
        block = np.pad(block, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    quads = (block[:, 0::2, 0::2], block[:, 1::2, 0::2], block[:, 0::2, 1::2], block[:, 1::2, 1::2])
    if how == "max":
        return np.maximum(np.maximum(quads[0], quads[1]), np.maximum(quads[2], quads[3]))
    total = quads[0].astype(np.uint16)  # in-place strided adds: much faster than a reduce over axes
    for quad in quads[1:]:
        total += quad
    total += 2
    total >>= 2
    return total.astype(np.uint8)


def halve(block: np.ndarray, how: str) -> np.ndarray:
    """2x downsampling of a channel-last (h, w, c) uint8 block, equal to :func:`_pool` on (c, h, w).

    ``mean`` uses OpenCV's area interpolation (exact for 2x: (a+b+c+d+2)//4, several times faster)."""
    if how != "mean":
        return _pool(block.transpose(2, 0, 1), how).transpose(1, 2, 0)
    h, w, c = block.shape
    if h % 2 or w % 2:
        block = np.pad(block, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    half = cv2.resize(block, (block.shape[1] // 2, block.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return half.reshape(block.shape[0] // 2, block.shape[1] // 2, c)


def build_pyramid(
    group: zarr.Group, levels: int, chunk: int, codec, how: str, start: int = 1, workers: int = 2
) -> None:
    """Fill levels ``start``..levels-1 of ``group`` from the level below, one output chunk at a time.

    ``how`` is ``mean`` (images) or ``max`` (labels: small objects stay visible).  Where chunk files can
    be read and written directly (uint8 levels in a local store, see :func:`direct_path`), each output
    chunk is read from its 2x2 source chunk files, pooled, encoded and written in ``workers`` cores'
    threads, bypassing zarr (whose path reads, pools and writes one chunk at a time on one core: a
    noticeable share of a compact store's conversion; benchmarks/journal/convert.md, fourth round);
    elsewhere through zarr.
    """
    with chunk_writers(workers) as executor:
        for k in range(start, levels):
            src = group[str(k - 1)]
            *c, h, w = src.shape  # (c, y, x) images, (y, x) label images
            dst = create_level(group, str(k), (*c, (h + 1) // 2, (w + 1) // 2), chunk, codec, dtype=src.dtype)
            folders = direct_path(src), direct_path(dst)
            corners = [(y0, x0) for y0 in range(0, dst.shape[-2], chunk) for x0 in range(0, dst.shape[-1], chunk)]
            if None in folders or src.dtype != np.uint8:
                for y0, x0 in corners:
                    block = np.asarray(src[..., 2 * y0 : 2 * (y0 + chunk), 2 * x0 : 2 * (x0 + chunk)])
                    pooled = _pool(block if c else block[None], how)
                    dst[..., y0 : y0 + chunk, x0 : x0 + chunk] = pooled if c else pooled[0]
                continue
            jobs = [
                executor.submit(_pool_chunk, src, dst, folders, y0 // chunk, x0 // chunk, how) for y0, x0 in corners
            ]
            for job in jobs:
                job.result()


def _pool_chunk(src: zarr.Array, dst: zarr.Array, folders: tuple[Path, Path], i: int, j: int, how: str) -> None:
    """Chunk (``i``, ``j``) of level ``dst``: the 2x2 pooling of the (up to) 2x2 chunks of ``src`` below it, read
    from and written to the chunk files in ``folders`` (source, destination)."""
    *c, h, w = src.shape
    cy, cx = src.metadata.chunks[-2:]
    lead = (0,) * len(c)
    grid = []
    for y in range(2 * i, min(2 * i + 2, -(-h // cy))):
        row = []
        for x in range(2 * j, min(2 * j + 2, -(-w // cx))):
            ph, pw = min(cy, h - y * cy), min(cx, w - x * cx)
            data = read_chunk(src, folders[0], (*lead, y, x))
            if data is None:
                row.append(np.full((ph, pw, c[0] if c else 1), src.metadata.fill_value, np.uint8))
            else:  # a label chunk as one plane
                row.append(interleave(data[..., :ph, :pw].reshape(-1, ph, pw)))
        grid.append(row)
    write_chunk(dst, folders[1], (*lead, i, j), halve_grid(grid, how))


def chunk_grid(
    pieces: list[tuple[int, int, np.ndarray]], y0: int, y1: int, x0: int, x1: int, chunk: int
) -> list[list[np.ndarray]]:
    """Rows ``y0:y1``, columns ``x0:x1`` (a chunk corner at ``y0, x0``) as a chunk grid (see :func:`write_grid`)
    from channel-last ``(y, x, pixels)`` pieces that cover it.

    A chunk inside one piece is a view of it (a decoded tile the size of a
    chunk is used as it is); a chunk spanning several pieces is pasted."""
    rows, cols = -(-(y1 - y0) // chunk), -(-(x1 - x0) // chunk)
    cells: dict[tuple[int, int], np.ndarray] = {}
    for y, x, pixels in pieces:
        h, w = pixels.shape[:2]
        for i in range(max(0, (y - y0) // chunk), min(rows, -(-(y + h - y0) // chunk))):
            cy0, cy1 = y0 + i * chunk, min(y1, y0 + (i + 1) * chunk)
            for j in range(max(0, (x - x0) // chunk), min(cols, -(-(x + w - x0) // chunk))):
                cx0, cx1 = x0 + j * chunk, min(x1, x0 + (j + 1) * chunk)
                if y <= cy0 and cy1 <= y + h and x <= cx0 and cx1 <= x + w:
                    cells[i, j] = pixels[cy0 - y : cy1 - y, cx0 - x : cx1 - x]
                    continue
                cell = cells.setdefault((i, j), np.zeros((cy1 - cy0, cx1 - cx0, pixels.shape[2]), pixels.dtype))
                ty0, ty1, tx0, tx1 = max(y, cy0), min(y + h, cy1), max(x, cx0), min(x + w, cx1)
                if ty1 > ty0 and tx1 > tx0:
                    cell[ty0 - cy0 : ty1 - cy0, tx0 - cx0 : tx1 - cx0] = pixels[ty0 - y : ty1 - y, tx0 - x : tx1 - x]
    return [[cells[i, j] for j in range(cols)] for i in range(rows)]


def halve_grid(grid: list[list[np.ndarray]], how: str) -> np.ndarray:
    """:func:`halve` of the region that chunk grid ``grid`` (see :func:`write_grid`) covers, as one array.

    Each piece is pooled straight into its place, so the full-resolution
    region is never pasted together; equal to halving the assembled region
    because only pieces at its right/bottom edge can have odd sizes."""
    heights = [-(-row[0].shape[0] // 2) for row in grid]
    widths = [-(-piece.shape[1] // 2) for piece in grid[0]]
    first = grid[0][0]
    out = np.empty((sum(heights), sum(widths), first.shape[2]), first.dtype)
    y = 0
    for row, h in zip(grid, heights):
        x = 0
        for piece, w in zip(row, widths):
            halve_into(piece, out[y : y + h, x : x + w], how)
            x += w
        y += h
    return out


def halve_into(piece: np.ndarray, target: np.ndarray, how: str) -> None:
    """:func:`halve` of channel-last ``piece`` written into ``target`` (e.g. its place in a larger array)."""
    if how == "mean" and piece.shape[0] % 2 == 0 and piece.shape[1] % 2 == 0 and piece.shape[2] in (1, 3, 4):
        cv2.resize(piece, (target.shape[1], target.shape[0]), dst=target, interpolation=cv2.INTER_AREA)  # in place
    else:
        target[:] = halve(piece, how)


class PyramidWriter:
    """Write level 0 in full-width channel-last row bands and build levels 1.. on the fly, in one pass.

    Each level keeps at most one chunk row of pending rows; when ``chunk``
    rows are complete they are written (chunk-aligned, so no chunk is read
    back; compressed in ``workers`` threads) and pooled 2x into the next
    level.  The result equals :func:`build_pyramid` run on the finished
    level 0, without reading it again.  Memory: about two chunk rows of
    level 0, plus up to :attr:`INFLIGHT` chunk rows being written.  Use as
    a context manager or call :meth:`close`.
    """

    INFLIGHT = 2  # chunk rows written in the background at once (any level)

    def __init__(
        self,
        group: zarr.Group,
        shape: tuple[int, ...],
        levels: int,
        chunk: int,
        codec,
        how: str,
        *,
        workers: int = 2,
        x0: int = 0,
        create: bool = True,
        first: int = 0,
    ):
        """``x0``: level-0 column of the bands' first column (a vertical strip of the image; it must
        be a chunk corner at every level written); ``create``: make the level arrays, else write
        into the group's existing ones (a later strip); ``first``: the number of the first level
        written, whose shape ``shape`` is (e.g. a pyramid's upper levels from bands pooled in memory)."""
        self.chunk, self.how = chunk, how
        *c, h, w = shape  # (c, y, x) images, (y, x) label images (bands then have c = 1)
        if x0 % (chunk * 2 ** (levels - 1)):
            raise ValueError(f"strip column {x0} is not a chunk corner at all {levels} levels")
        self.x0 = x0
        self.arrays = []
        for k in range(first, first + levels):
            self.arrays.append(create_level(group, str(k), (*c, h, w), chunk, codec) if create else group[str(k)])
            h, w = (h + 1) // 2, (w + 1) // 2
        self.pending: list[list[np.ndarray]] = [[] for _ in range(levels)]
        self.written = [0] * levels  # rows written per level
        self.executor = chunk_writers(workers)
        self.inflight: deque[list[Future]] = deque()  # chunk rows being encoded and written, oldest first

    def add(self, band: np.ndarray, k: int = 0) -> None:
        """Append channel-last ``band`` (rows, width of level ``k``, c) below the rows given so far.

        Its chunks are written in the background: ``band`` must not change afterwards."""
        self.pending[k].append(band)
        rows = sum(b.shape[0] for b in self.pending[k])
        if rows >= self.chunk:
            stacked = np.concatenate(self.pending[k]) if len(self.pending[k]) > 1 else band
            full = rows - rows % self.chunk
            self.pending[k] = [stacked[full:]] if full < rows else []
            self._write(stacked[:full], k)

    def _write(self, rows: np.ndarray, k: int) -> None:
        """Write chunk rows ``rows`` of level ``k`` without waiting (the caller goes on pooling and
        predicting); at most :attr:`INFLIGHT` of them at once, so memory stays a few chunk rows."""
        self.inflight.append(
            write_block(self.arrays[k], self.written[k], self.x0 >> k, rows, self.executor, wait=False)
        )
        self._wait(self.INFLIGHT)
        self.written[k] += rows.shape[0]
        if k + 1 < len(self.arrays):
            self.add(halve(rows, self.how), k + 1)

    def _wait(self, inflight: int) -> None:
        """Wait for the oldest chunk rows being written until at most ``inflight`` are (re-raising their errors)."""
        while len(self.inflight) > inflight:
            for job in self.inflight.popleft():
                job.result()

    def close(self) -> None:
        """Write the last, partial chunk row of every level and stop the threads."""
        try:
            for k in range(len(self.arrays)):
                if self.pending[k]:
                    rows = np.concatenate(self.pending[k])
                    self.pending[k] = []
                    self._write(rows, k)
            self._wait(0)
        finally:
            self.executor.shutdown()

    def __enter__(self) -> "PyramidWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        else:
            self.executor.shutdown(cancel_futures=True)


def write_levels(
    arrays: list[zarr.Array],
    first: int,
    y: int,
    x: int,
    block: np.ndarray,
    executor: ThreadPoolExecutor,
    above: BlockPyramid | None,
) -> list[Future]:
    """Write channel-last ``block``, level ``first`` of the square block at level-0 corner (``y``, ``x``), and its
    2x2 means into levels ``first``..``len(arrays) - 1`` (``arrays``: one per level from 0) without waiting; hand
    the top one to ``above`` (the levels above, see :class:`BlockPyramid`) unless None.  The pending writes."""
    pending: list[Future] = []
    top = len(arrays) - 1
    for k in range(first, top + 1):
        pending += write_block(arrays[k], y >> k, x >> k, block, executor, wait=False)
        if k < top:
            block = halve(block, "mean")
    if above is not None:
        above.add(block)
    return pending


class BlockPyramid:
    """The levels above a block-wise conversion's top level ``first - 1``, built from its blocks in memory.

    Block-wise writers (:func:`wsiseg.convert.write_blocks`, :func:`wsiseg.store.tilecopy.write_copied`) make
    levels 0..``first - 1`` by square blocks, block rows top to bottom, each left to right.  :meth:`add`
    pools each block's level ``first - 1`` once more (while in cache) into its piece of level ``first``;
    when a block row's pieces reach the image's width they are joined and handed to a
    :class:`PyramidWriter`, which writes level ``first`` and pools the levels above it: no level is read
    back from the store.  Memory: half a chunk row of level ``first`` per block row.  Only the image's
    last block row and column can have odd sizes, so pooling piece by piece gives the same pixels as
    pooling the whole level (edge rows and columns repeated, as :func:`build_pyramid` does)."""

    def __init__(
        self,
        group: zarr.Group,
        below: tuple[int, int, int],
        levels: int,
        chunk: int,
        codec,
        how: str,
        workers: int,
        first: int,
    ):
        """``below``: (c, h, w) of level ``first - 1``; ``levels``: how many levels to write from ``first`` on."""
        c, h, w = below
        self.width, self.how = w, how
        self.row: list[np.ndarray] = []  # this block row's pieces of level ``first`` so far
        self.filled = 0  # columns of level ``first - 1`` they cover
        self.pyramid = PyramidWriter(
            group, (c, (h + 1) // 2, (w + 1) // 2), levels, chunk, codec, how, workers=workers, first=first
        )

    def add(self, block: np.ndarray) -> None:
        """Pool channel-last ``block`` (h, w, c), the next block of level ``first - 1`` (left to right, then the
        next block row), into its piece of level ``first``."""
        self.row.append(halve(block, self.how))
        self.filled += block.shape[1]
        if self.filled >= self.width:
            self.pyramid.add(np.concatenate(self.row, axis=1) if len(self.row) > 1 else self.row[0])
            self.row, self.filled = [], 0

    def __enter__(self) -> "BlockPyramid":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None and self.row:
            self.pyramid.__exit__(RuntimeError, None, None)
            raise RuntimeError(f"block row left incomplete: {self.filled} of {self.width} columns")
        self.pyramid.__exit__(*exc)
