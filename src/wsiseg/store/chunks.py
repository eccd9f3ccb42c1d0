"""Chunk I/O of zarr (format 2) levels: the chunk codec, creating levels, reading planes and padded regions
(chunks decoded in a thread pool), and writing chunk files directly (O_DIRECT on local disks) by block or grid.

Every read and write goes chunk by chunk, so memory stays bounded whatever the slide size.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numcodecs
import numpy as np
import zarr
from zarr.storage import LocalStore

from wsiseg.store.codecs import PlanarJpeg  # registers the wsiseg_jpeg codec for every reader of slide stores

SHUFFLES = {"bit": numcodecs.Blosc.BITSHUFFLE, "byte": numcodecs.Blosc.SHUFFLE, "none": numcodecs.Blosc.NOSHUFFLE}


LOSSY = ("jpeg",)  # image codecs that are not lossless: label images keep a Blosc codec


def compressor(name: str = "zstd", level: int = 5, shuffle: str = "bit"):
    """Blosc compressor (``name``: zstd, lz4, zlib, blosclz) with ``shuffle`` bit, byte or none; or ``jpeg``:
    lossy JPEG of quality ``level`` (0-100) for RGB image chunks (:class:`wsiseg.store.codecs.PlanarJpeg`)."""
    if name == "jpeg":
        return PlanarJpeg(level)
    return numcodecs.Blosc(cname=name, clevel=level, shuffle=SHUFFLES[shuffle])


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


def read_chunk(array: zarr.Array, folder: Path, coords: tuple[int, ...]) -> np.ndarray | None:
    """Chunk ``coords`` of uint8 ``array`` decoded from its file in ``folder`` (the whole padded chunk, (c, y, x)
    or (y, x)); None when the chunk has no file (all fill value)."""
    try:
        data = (folder / array.metadata.encode_chunk_key(coords)).read_bytes()
    except FileNotFoundError:
        return None
    return np.frombuffer(array.metadata.compressor.decode(data), np.uint8).reshape(array.metadata.chunks)


def direct_path(array: zarr.Array) -> Path | None:
    """Directory holding ``array``'s chunk files when they can be written directly, else None.

    True for zarr v2 arrays in a local directory store with ``.`` chunk keys,
    C order and no filters (what :func:`create_level` makes)."""
    meta = array.metadata
    if getattr(meta, "zarr_format", None) != 2 or meta.filters or meta.order != "C" or meta.dimension_separator != ".":
        return None
    root = getattr(array.store, "root", None)
    return Path(root) / array.path if isinstance(array.store, LocalStore) and root is not None else None


def write_chunk(array: zarr.Array, folder: Path, coords: tuple[int, ...], block: np.ndarray) -> None:
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
# store's conversion ran faster that way (benchmarks/journal/convert.md; benchmarks/convert_bench.py).
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
    cache cost more CPU than encoding it (benchmarks/journal/convert.md,
    O_DIRECT chunk files).  The data is padded to whole blocks
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
        chunk = np.empty(shape, block.dtype)  # OpenCV's channel split: faster than numpy's strided copies
        cv2.split(np.ascontiguousarray(block), list(chunk))
        return chunk
    chunk = np.full(shape, array.metadata.fill_value, block.dtype)
    for c in range(channels):  # per-channel copies: much faster than a transposing copy
        chunk[c, :h, :w] = block[:, :, c]
    return chunk


def interleave(planar: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(c, h, w) → (h, w, c): a contiguous copy (cv2.merge, much faster than a numpy transpose copy), or for a
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
    (a faster conversion on 2 cores); else (``direct`` False: files under :data:`SMALL`, e.g. JPEG chunks,
    written through the page cache) one per core, sparing the CPU the extra threads' switching (a compact
    store's tile copy ran faster, on less CPU).  Both measured with ``benchmarks/convert_bench.py``'s
    alternating runs: benchmarks/journal/convert.md."""
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
    folder = direct_path(array)
    if folder is None or executor is None:
        for i, row in enumerate(grid):
            for j, piece in enumerate(row):
                y, x = y0 + i * cy, x0 + j * cx
                data = piece.transpose(2, 0, 1) if lead else piece[:, :, 0]
                array[..., y : y + piece.shape[0], x : x + piece.shape[1]] = data
        return []
    jobs = [
        executor.submit(write_chunk, array, folder, (*lead, y0 // cy + i, x0 // cx + j), piece)
        for i, row in enumerate(grid)
        for j, piece in enumerate(row)
    ]
    if wait:
        for job in jobs:
            job.result()
        return []
    return jobs


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
    (a local zarr v2 store, see :func:`direct_path`), each chunk is decoded from its file in
    :func:`_region_readers`' threads and laid into place channel-last: no planar copy of the
    whole region, no second pass to interleave it, and none of zarr's per-chunk event-loop work
    (reading level-0 bands for prediction: about half the CPU of zarr's read).  Elsewhere zarr reads."""
    *c, h, w = array.shape
    if out is None:
        out = np.empty((y1 - y0, x1 - x0, c[0] if c else 1), np.uint8)
    folder = direct_path(array) if array.dtype == np.uint8 else None
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
    data = read_chunk(array, folder, (*(0,) * len(c), *ij))
    if data is None:
        target[:] = array.metadata.fill_value or 0
        return
    (i, j), (y, x), (th, tw) = ij, origin, target.shape[:2]
    interleave(data.reshape(-1, cy, cx)[:, y - i * cy : y - i * cy + th, x - j * cx : x - j * cx + tw], out=target)
