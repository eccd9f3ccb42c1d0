"""OME-NGFF (v0.4) multiscale slide stores: writing pyramids and reading regions.

Layout of ``{slide}.zarr`` (zarr format 2, Blosc-zstd chunks)::

    0, 1, 2, ...          image pyramid, axes (c, y, x), uint8 RGB
    labels/mask/0, 1, ... label pyramid, axes (y, x), uint8 0/1 (or class indices):
                          an NGFF image-label, so viewers (napari) overlay it as a 2-D
                          labels layer on the image (stores written before this kept a
                          c = 1 axis, (c, y, x); readers accept both, see :func:`read_plane`)

Every level is written and read chunk by chunk, so memory stays bounded
whatever the slide size.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numcodecs
import numpy as np
import zarr
from zarr.storage import LocalStore

from wsiseg.errors import StoreError
from wsiseg.resolution import PixelSize
from wsiseg.store.codecs import PlanarJpeg  # registers the wsiseg_jpeg codec for every reader of slide stores

NGFF_VERSION = "0.4"
AXES = [
    {"name": "c", "type": "channel"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]
LABEL_AXES = AXES[1:]  # label images: (y, x), no channel axis (a 2-D labels layer in napari)


SHUFFLES = {"bit": numcodecs.Blosc.BITSHUFFLE, "byte": numcodecs.Blosc.SHUFFLE, "none": numcodecs.Blosc.NOSHUFFLE}


LOSSY = ("jpeg",)  # image codecs that are not lossless: label images keep a Blosc codec


def compressor(name: str = "zstd", level: int = 5, shuffle: str = "bit"):
    """Blosc compressor (``name``: zstd, lz4, zlib, blosclz) with ``shuffle`` bit, byte or none; or ``jpeg``:
    lossy JPEG of quality ``level`` (0-100) for RGB image chunks (:class:`wsiseg.store.codecs.PlanarJpeg`)."""
    if name == "jpeg":
        return PlanarJpeg(level)
    return numcodecs.Blosc(cname=name, clevel=level, shuffle=SHUFFLES[shuffle])


def level_count(height: int, width: int, chunk: int) -> int:
    """Number of 2x pyramid levels until the top level fits in one chunk."""
    return 1 + max(0, math.ceil(math.log2(max(height, width) / chunk))) if max(height, width) > chunk else 1


def multiscales(
    name: str, levels: int, method: str, axes: list[dict] = AXES, mpp: float | None = None, base: float = 1.0
) -> list[dict]:
    """NGFF v0.4 ``multiscales`` metadata for a 2x pyramid of ``levels`` levels with ``axes``
    (:data:`AXES` for images, :data:`LABEL_AXES` for label images).

    With ``mpp`` (the slide's level-0 micrometres per pixel) each level's scale is its pixel size in micrometres;
    without it the spatial axes carry no unit and the scale counts slide level-0 pixels.  ``base``: slide
    level-0 pixels per pixel of this pyramid's level 0 (e.g. a prediction stored at a downscale-2 model's grid)."""
    lead = [1.0] * (len(axes) - 2)
    step = (float(mpp) if mpp else 1.0) * float(base)
    if not mpp:
        axes = [{k: v for k, v in axis.items() if k != "unit"} for axis in axes]
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [{"type": "scale", "scale": [*lead, step * 2.0**k, step * 2.0**k]}],
        }
        for k in range(levels)
    ]
    return [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets, "type": method}]


def create_level(
    group: zarr.Group, path: str, shape: tuple[int, ...], chunk: int, codec, dtype: str = "uint8"
) -> zarr.Array:
    """Create one chunked level array, (c, y, x) or (y, x) for label images (uint8 unless ``dtype`` says otherwise)."""
    chunks = (shape[0], chunk, chunk) if len(shape) == 3 else (chunk, chunk)
    return group.create_array(path, shape=shape, chunks=chunks, dtype=dtype, compressors=codec, fill_value=0)


def read_plane(array: zarr.Array, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
    """``rows, cols`` of a single-plane array as (h, w): a (y, x) label image, or the first
    channel of a (c, y, x) array (label images of stores written before labels dropped c = 1).

    A uint8 (y, x) image is read through :func:`read_region` (chunk files decoded in threads, straight
    into place): e.g. the report's full-height column bands of a 40k² mask, ~80 chunks each."""
    if array.ndim == 2 and array.dtype == np.uint8 and rows.step in (None, 1) and cols.step in (None, 1):
        (y0, y1, _), (x0, x1, _) = rows.indices(array.shape[0]), cols.indices(array.shape[1])
        return read_region(array, y0, max(y0, y1), x0, max(x0, x1), 0)[:, :, 0]
    return np.asarray(array[rows, cols] if array.ndim == 2 else array[0, rows, cols])


def _pool(block: np.ndarray, how: str) -> np.ndarray:
    c, h, w = block.shape
    if h % 2 or w % 2:
        block = np.pad(block, ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    quads = (block[:, 0::2, 0::2], block[:, 1::2, 0::2], block[:, 0::2, 1::2], block[:, 1::2, 1::2])
    if how == "max":
        return np.maximum(np.maximum(quads[0], quads[1]), np.maximum(quads[2], quads[3]))
    total = quads[0].astype(np.uint16)  # in-place strided adds: ~20x faster than a reduce over axes
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
    be read and written directly (uint8 levels in a local store, see :func:`_direct_path`), each output
    chunk is read from its 2x2 source chunk files, pooled, encoded and written in ``workers`` cores'
    threads, bypassing zarr (a compact store's top levels: 0.24 s of a 2.0 s 20k² conversion through
    zarr, one core); elsewhere through zarr.
    """
    with chunk_writers(workers) as executor:
        for k in range(start, levels):
            src = group[str(k - 1)]
            *c, h, w = src.shape  # (c, y, x) images, (y, x) label images
            dst = create_level(group, str(k), (*c, (h + 1) // 2, (w + 1) // 2), chunk, codec, dtype=src.dtype)
            folders = _direct_path(src), _direct_path(dst)
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


def _read_chunk(array: zarr.Array, folder: Path, coords: tuple[int, ...]) -> np.ndarray | None:
    """Chunk ``coords`` of uint8 ``array`` decoded from its file in ``folder`` (the whole padded chunk, (c, y, x)
    or (y, x)); None when the chunk has no file (all fill value)."""
    try:
        data = (folder / array.metadata.encode_chunk_key(coords)).read_bytes()
    except FileNotFoundError:
        return None
    return np.frombuffer(array.metadata.compressor.decode(data), np.uint8).reshape(array.metadata.chunks)


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
            data = _read_chunk(src, folders[0], (*lead, y, x))
            if data is None:
                row.append(np.full((ph, pw, c[0] if c else 1), src.metadata.fill_value, np.uint8))
            else:  # a label chunk as one plane
                row.append(interleave(data[..., :ph, :pw].reshape(-1, ph, pw)))
        grid.append(row)
    _write_chunk(dst, folders[1], (*lead, i, j), halve_grid(grid, how))


def _direct_path(array: zarr.Array) -> Path | None:
    """Directory holding ``array``'s chunk files when they can be written directly, else None.

    True for zarr v2 arrays in a local directory store with ``.`` chunk keys,
    C order and no filters (what :func:`create_level` makes)."""
    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 2 or meta.filters or meta.order != "C" or meta.dimension_separator != ".":
        return None
    root = getattr(array.store, "root", None)
    return Path(root) / array.path if isinstance(array.store, LocalStore) and root is not None else None


def _write_chunk(array: zarr.Array, folder: Path, coords: tuple[int, ...], block: np.ndarray) -> None:
    """Encode one chunk from channel-last ``block`` (h, w, c) and write its file.

    The chunk is laid out (c, chunk, chunk) and padded with the fill value,
    as zarr v2 stores edge chunks."""
    data = array.metadata.compressor.encode(planar(block, array))
    write_chunk_file(folder / array.metadata.encode_chunk_key(coords), data)


def write_chunk_file(path: Path, data: bytes) -> None:
    """Write one encoded chunk's file: with O_DIRECT (:func:`write_file`) where it pays; files under
    :data:`SMALL` (background and constant chunks, JPEG chunks) through the page cache, where an O_DIRECT
    write would wait on the device for each."""
    if len(data) >= SMALL:
        write_file(path, data)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


ALIGN = 4096  # O_DIRECT needs buffer, offset and length aligned to the device's logical block size (512 or 4096)
_buffers = threading.local()
LOCAL_FILE_SYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"}  # local disks: O_DIRECT is fast there
_direct_folders: dict[str, bool] = {}  # folder -> whether its chunk files are written with O_DIRECT
# Smaller files go through the page cache: a direct write waits on the device for each, and costs an extra
# truncate.  Lossless tissue chunks (~0.5 MB) stay direct; JPEG chunks (50-200 KB) are cached: a compact
# store's conversion ran 5% faster that way (median of 8 alternating runs, 20k² real H&E, 7 of 8 pairs).
SMALL = 1 << 18


def mount_of(path: str | Path) -> tuple[str, str, str]:
    """(device, mount point, file system type) of the mount holding ``path`` (the visible one of stacked
    mounts); empty strings when the mount table cannot be read."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return "", "", ""
    target, best, found = os.path.realpath(path), -1, ("", "", "")
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (target == point or target.startswith(point.rstrip("/") + "/")) and len(point) >= best:
            best, found = (
                len(point),
                (fields[0], point, fields[2]),
            )  # a later mount on the same point hides earlier ones
    return found


def file_system(path: str | Path) -> str:
    """The type of the file system holding ``path`` (``ext4``, ``nfs4``, ``tmpfs``, ...; empty when unknown)."""
    return mount_of(path)[2]


def direct_io(folder: str | Path) -> bool:
    """Whether chunk files in ``folder`` are written with O_DIRECT: on Linux, on local disk file systems
    (:data:`LOCAL_FILE_SYSTEMS`), unless ``WSISEG_DIRECT_IO=0``.  Network and memory file systems keep
    the page cache (direct writes to NFS wait for the server one by one)."""
    if not hasattr(os, "O_DIRECT") or os.environ.get("WSISEG_DIRECT_IO", "1") == "0":
        return False
    key = str(folder)
    if key not in _direct_folders:
        _direct_folders[key] = file_system(folder) in LOCAL_FILE_SYSTEMS
    return _direct_folders[key]


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file at ``path``, bypassing the page cache (O_DIRECT) where the file system allows.

    A store is written once and read later; copying it through the page
    cache cost about 1 s of CPU per GB on the virtual machines this was
    measured on, more than encoding it.  The data is padded to whole blocks
    in an aligned buffer, written, and the file truncated to its length.
    Other file systems (see :func:`direct_io`), or one that refuses
    O_DIRECT, get a plain write; a refusal is remembered for the folder."""
    if not direct_io(path.parent):
        path.write_bytes(data)
        return
    size = -(-len(data) // ALIGN) * ALIGN
    buffer = getattr(_buffers, "mm", None)
    if buffer is None or len(buffer) < size:
        buffer = _buffers.mm = mmap.mmap(-1, max(size, 2**21))  # anonymous maps are page-aligned
    buffer[: len(data)] = data
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        try:
            view = memoryview(buffer)[:size]
            while view:  # a short write leaves an unaligned rest: the next write fails with EINVAL
                view = view[os.write(fd, view) :]
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
        _direct_folders[str(path.parent)] = False
        path.write_bytes(data)


def planar(block: np.ndarray, array: zarr.Array) -> np.ndarray:
    """Channel-last ``block`` (h, w, c) laid out as one (c, y, x) chunk of ``array`` (a (y, x) chunk of a
    label image, c = 1), padded with its fill value."""
    shape = array.metadata.chunks
    h, w, channels = block.shape
    if len(shape) == 2:
        chunk = np.full(shape, array.metadata.fill_value, block.dtype)
        chunk[:h, :w] = block[:, :, 0]
        return chunk
    if (channels, h, w) == shape and channels in (3, 4) and block.dtype == np.uint8:
        chunk = np.empty(shape, block.dtype)  # OpenCV's channel split: ~2x numpy's strided copies
        cv2.split(np.ascontiguousarray(block), list(chunk))
        return chunk
    chunk = np.full(shape, array.metadata.fill_value, block.dtype)
    for c in range(channels):  # per-channel copies: much faster than a transposing copy
        chunk[c, :h, :w] = block[:, :, c]
    return chunk


def interleave(planar: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(c, h, w) → (h, w, c): a contiguous copy (cv2.merge, ~20x faster than a numpy transpose copy), or for a
    single channel a view of it (nothing to reorder); written into ``out`` ((h, w, c), e.g. a view of a larger
    buffer) when given."""
    if out is None:
        if planar.shape[0] == 1:
            return planar[0][:, :, None]
        return cv2.merge(list(planar)).reshape(planar.shape[1], planar.shape[2], planar.shape[0])
    if planar.shape[0] == 1:
        out[:, :, 0] = planar[0]
    elif (
        merged := cv2.merge(list(planar), dst=out)
    ) is not out:  # OpenCV made its own array: a layout it could not write into
        out[:] = merged.reshape(out.shape)
    return out


def chunk_writers(workers: int, direct: bool = True) -> ThreadPoolExecutor:
    """The thread pool that lays out, encodes and writes chunks for ``workers`` cores: two threads per core
    when chunks may be written with O_DIRECT, since a thread waits on the device during each such write
    (measured ~8% faster conversion on 2 cores); else (``direct`` False: files under :data:`SMALL`, e.g. JPEG
    chunks, written through the page cache) one per core, sparing the CPU the extra threads' switching (a
    compact store's tile copy: 0.91 vs 0.95 s and 5% less CPU, 12 alternating runs on a 20k² real slide)."""
    return ThreadPoolExecutor((2 if direct else 1) * max(1, workers), thread_name_prefix="zarr-chunks")


def write_block(
    array: zarr.Array,
    y0: int,
    x0: int,
    block: np.ndarray,
    executor: ThreadPoolExecutor | None = None,
    wait: bool = True,
) -> list[Future]:
    """Write channel-last ``block`` (h, w, c) at (``y0``, ``x0``) of a (c, y, x) array (or (h, w, 1) of a (y, x) one).

    (y0, x0) is a chunk corner and the block ends on chunk boundaries or at
    the array's edge (see :func:`write_grid`)."""
    cy, cx = array.metadata.chunks[-2:]
    grid = [[block[y : y + cy, x : x + cx] for x in range(0, block.shape[1], cx)] for y in range(0, block.shape[0], cy)]
    return write_grid(array, y0, x0, grid, executor, wait)


def write_grid(
    array: zarr.Array,
    y0: int,
    x0: int,
    grid: list[list[np.ndarray]],
    executor: ThreadPoolExecutor | None = None,
    wait: bool = True,
) -> list[Future]:
    """Write ``grid[i][j]``, the channel-last pixels of chunk (i, j) counted from chunk corner (``y0``, ``x0``).

    Every piece is one whole chunk, or the part of it inside the array at
    its edge.  Chunks are laid out and compressed in ``executor``'s threads
    and written straight to their files when the store allows (several
    times faster than zarr's own write path); otherwise through zarr.
    With ``wait=False`` the pending writes are returned instead of awaited
    (the pieces must stay unchanged until they are done)."""
    cy, cx = array.metadata.chunks[-2:]
    lead = (0,) * (array.ndim - 2)  # the channel chunk of (c, y, x) arrays; none for (y, x) label images
    folder = _direct_path(array)
    if folder is None or executor is None:
        for i, row in enumerate(grid):
            for j, piece in enumerate(row):
                y, x = y0 + i * cy, x0 + j * cx
                data = piece.transpose(2, 0, 1) if lead else piece[:, :, 0]
                array[..., y : y + piece.shape[0], x : x + piece.shape[1]] = data
        return []
    jobs = [
        executor.submit(_write_chunk, array, folder, (*lead, y0 // cy + i, x0 // cx + j), piece)
        for i, row in enumerate(grid)
        for j, piece in enumerate(row)
    ]
    if wait:
        for job in jobs:
            job.result()
        return []
    return jobs


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
            group, (c, (h + 1) // 2, (w + 1) // 2), levels, chunk, codec, how, workers, first=first
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


def read_padded(array: zarr.Array, y0: int, y1: int, x0: int, x1: int, fill: int) -> np.ndarray:
    """Read ``array[:, y0:y1, x0:x1]`` of a (c, y, x) array, padding with ``fill`` outside it.

    A (y, x) label image reads as c = 1."""
    *c, h, w = array.shape
    if (
        array.dtype == np.uint8 and 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w
    ):  # inside: zarr's own output, no fill and copy
        inside = np.asarray(array[..., y0:y1, x0:x1])
        return inside if c else inside[None]
    out = np.full((*(c or [1]), y1 - y0, x1 - x0), fill, dtype=np.uint8)
    ry0, ry1, rx0, rx1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    if ry1 > ry0 and rx1 > rx0:
        out[:, ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = array[..., ry0:ry1, rx0:rx1]
    return out


_region_pool: tuple[int, ThreadPoolExecutor] | None = None  # (the process that made it, the pool)
_region_lock = threading.Lock()


def _region_readers() -> ThreadPoolExecutor:
    """Threads that decode the chunks of :func:`read_region`, shared by every reader: made once per
    process (a forked child, e.g. a data-loader worker, inherits the pool but not its threads)."""
    global _region_pool
    with _region_lock:
        if _region_pool is None or _region_pool[0] != os.getpid():
            _region_pool = (os.getpid(), ThreadPoolExecutor(2, thread_name_prefix="wsiseg-chunk-read"))
        return _region_pool[1]


def read_region(
    array: zarr.Array, y0: int, y1: int, x0: int, x1: int, fill: int, out: np.ndarray | None = None
) -> np.ndarray:
    """``array[:, y0:y1, x0:x1]`` of a (c, y, x) uint8 array channel-last, (h, w, c), padded with ``fill`` outside
    the array; written into ``out`` when given (e.g. a slice of a larger buffer).  A (y, x) label image reads as c = 1.

    Equal to ``interleave(read_padded(...))``.  For arrays whose chunk files can be read directly
    (a local zarr v2 store, see :func:`_direct_path`), each chunk is decoded from its file in
    :func:`_region_readers`' threads and laid into place channel-last: no planar copy of the
    whole region, no second pass to interleave it, and none of zarr's per-chunk event-loop work
    (reading level-0 bands for prediction: about half the CPU of zarr's read).  Elsewhere zarr reads."""
    *c, h, w = array.shape
    if out is None:
        out = np.empty((y1 - y0, x1 - x0, c[0] if c else 1), np.uint8)
    folder = _direct_path(array) if array.dtype == np.uint8 else None
    if folder is None:
        return interleave(read_padded(array, y0, y1, x0, x1, fill), out=out)
    ry0, ry1, rx0, rx1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    if (ry0, ry1, rx0, rx1) != (y0, y1, x0, x1):  # partly outside the array
        out[:] = fill
    if ry1 <= ry0 or rx1 <= rx0:
        return out
    cy, cx = array.metadata.chunks[-2:]
    pool, jobs = _region_readers(), []
    for i in range(ry0 // cy, -(-ry1 // cy)):
        ty0, ty1 = max(ry0, i * cy), min(ry1, (i + 1) * cy)  # the chunk's rows inside the region
        for j in range(rx0 // cx, -(-rx1 // cx)):
            tx0, tx1 = max(rx0, j * cx), min(rx1, (j + 1) * cx)
            jobs.append(
                pool.submit(
                    _place_chunk, array, folder, (i, j), out[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0], (ty0, tx0)
                )
            )
    for job in jobs:
        job.result()
    return out


def _place_chunk(
    array: zarr.Array, folder: Path, ij: tuple[int, int], target: np.ndarray, origin: tuple[int, int]
) -> None:
    """Decode chunk ``ij`` of ``array`` from its file and copy its part at array position ``origin`` (the
    top-left of ``target``) into channel-last ``target``; a chunk without a file is the fill value."""
    *c, _, _ = array.shape
    cy, cx = array.metadata.chunks[-2:]
    data = _read_chunk(array, folder, (*(0,) * len(c), *ij))
    if data is None:
        target[:] = array.metadata.fill_value or 0
        return
    (i, j), (y, x), (th, tw) = ij, origin, target.shape[:2]
    interleave(data.reshape(-1, cy, cx)[:, y - i * cy : y - i * cy + th, x - j * cx : x - j * cx + tw], out=target)


class SlideStore:
    """Read access to a converted slide: regions of image and mask at any downscale."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.root = zarr.open_group(self.path, mode="r")
            meta = self.root.attrs["multiscales"][0]
        except Exception as err:
            raise StoreError(f"{self.path}: not an OME-NGFF slide store ({err})") from None
        self.levels = [self.root[d["path"]] for d in meta["datasets"]]
        self.mask_levels: list[zarr.Array] = []
        if "labels" in self.root and "mask" in self.root["labels"]:
            label = self.root["labels/mask"]
            self.mask_levels = [label[d["path"]] for d in label.attrs["multiscales"][0]["datasets"]]
        self.instances: zarr.Array | None = None  # object ids (uint32, level 0) when the annotation had objects
        if "labels" in self.root and "instances" in self.root["labels"]:
            self.instances = self.root["labels/instances/0"]
        info = self.root.attrs.get("wsiseg", {})
        self.slide_id = info.get("slide_id", self.path.stem)
        self.pixel_size = PixelSize.from_attrs(info)
        _, self.height, self.width = self.levels[0].shape

    @property
    def has_mask(self) -> bool:
        """Whether the store holds a ground-truth label image."""
        return bool(self.mask_levels)

    def mask_plane(self, k: int = 0, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """(h, w) labels of ``rows, cols`` of pyramid level ``k`` of the ground truth (see :func:`read_plane`)."""
        return read_plane(self.mask_levels[k], rows, cols)

    def instance_plane(self) -> np.ndarray | None:
        """Level-0 object ids (h, w) when the annotation had objects, else None."""
        return None if self.instances is None else read_plane(self.instances)

    def level_for(self, downscale: float) -> int:
        """Coarsest pyramid level whose scale does not exceed ``downscale``."""
        k = int(math.floor(math.log2(downscale) + 1e-9)) if downscale >= 1 else 0
        return max(0, min(k, len(self.levels) - 1))

    def _region(self, levels: list[zarr.Array], y0: int, x0: int, size: tuple[int, int], downscale: float, fill: int):
        k = self.level_for(downscale)
        f = 2**k
        out_h, out_w = size
        span_y, span_x = out_h * downscale, out_w * downscale
        ly0, lx0 = int(math.floor(y0 / f)), int(math.floor(x0 / f))
        ly1, lx1 = int(math.ceil((y0 + span_y) / f)), int(math.ceil((x0 + span_x) / f))
        block = read_region(levels[k], ly0, ly1, lx0, lx1, fill)
        if block.shape[:2] != (out_h, out_w):
            block = cv2.resize(block, (out_w, out_h), interpolation=cv2.INTER_AREA)
            if block.ndim == 2:
                block = block[:, :, None]
        return block

    def read_image(self, y0: int, x0: int, size: tuple[int, int], downscale: float = 1.0) -> np.ndarray:
        """RGB (h, w, 3) of the level-0 box at (y0, x0) spanning ``size * downscale`` pixels.

        Outside the slide is white (background)."""
        return self._region(self.levels, y0, x0, size, downscale, 255)

    def read_mask(self, y0: int, x0: int, size: tuple[int, int], downscale: float = 1.0) -> np.ndarray:
        """Binary (h, w) uint8 mask of the same box as :meth:`read_image`.

        Read from level 0 and area-resampled (a pixel is foreground when at
        least half of its footprint is), so coverage is exact at any downscale."""
        if not self.has_mask:
            raise StoreError(f"{self.path}: slide has no mask")
        h, w = size
        span_y, span_x = int(round(h * downscale)), int(round(w * downscale))
        block = (read_padded(self.mask_levels[0], y0, y0 + span_y, x0, x0 + span_x, 0)[0] > 0).astype(np.uint8)
        if block.shape != (h, w):
            block = cv2.resize(block.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
        return block.astype(np.uint8)

    def dims(self, downscale: float) -> tuple[int, int]:
        """(height, width) of the slide at ``downscale``."""
        return math.ceil(self.height / downscale), math.ceil(self.width / downscale)
