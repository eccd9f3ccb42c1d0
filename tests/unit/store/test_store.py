"""Chunk file writing: O_DIRECT where the file system allows it, plain writes elsewhere, same bytes either way."""

import errno
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

from wsiseg.store import chunks, ngff, pyramid
from wsiseg.store.chunks import compressor, create_level, write_block, write_file
from wsiseg.store.slide import SlideStore


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 2**20 + 5])
def test_write_file_writes_exactly_the_bytes(tmp_path, size):
    """Sizes off the block size are padded for O_DIRECT and truncated back; larger than the first buffer too."""
    data = os.urandom(size)
    write_file(tmp_path / "chunk", data)
    assert (tmp_path / "chunk").read_bytes() == data
    write_file(tmp_path / "chunk", data[: size // 2])  # an existing file is replaced, not partly overwritten
    assert (tmp_path / "chunk").read_bytes() == data[: size // 2]


def test_file_systems_refusing_direct_io_get_plain_writes(tmp_path, monkeypatch):
    """tmpfs and some network file systems answer O_DIRECT with EINVAL: the data is written anyway, and the
    folder is not asked again."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    calls = []
    real_open = os.open

    def refusing_open(path, flags, *args):
        calls.append(bool(flags & os.O_DIRECT))
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(chunks, "_direct_folders", {})
    monkeypatch.setattr(chunks, "file_system", lambda path: "ext4")
    for name in ("a", "b"):
        write_file(tmp_path / name, b"chunk " + name.encode())
    assert (tmp_path / "a").read_bytes() == b"chunk a" and (tmp_path / "b").read_bytes() == b"chunk b"
    assert calls.count(True) == 1  # asked once per folder


@pytest.mark.parametrize(
    "kind,direct", [("ext4", True), ("xfs", True), ("nfs4", False), ("lustre", False), ("tmpfs", False)]
)
def test_direct_io_only_on_local_disk_file_systems(tmp_path, monkeypatch, kind, direct):
    """Network file systems keep the page cache (direct writes to NFS wait for the server one by one)."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    monkeypatch.setattr(chunks, "_direct_folders", {})
    monkeypatch.setattr(chunks, "file_system", lambda path: kind)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *args: opened.append(flags) or real_open(path, flags, *args))
    write_file(tmp_path / "chunk", b"data")
    assert (tmp_path / "chunk").read_bytes() == b"data"
    assert any(flags & os.O_DIRECT for flags in opened) == direct


@pytest.mark.parametrize("size,direct", [(chunks.SMALL - 1, False), (chunks.SMALL, True)])
def test_chunk_files_below_the_small_size_go_through_the_page_cache(tmp_path, monkeypatch, size, direct):
    """JPEG and background chunks are cached writes (a direct write waits on the device for each); large
    lossless chunks bypass the cache on local disks.  Either way the file holds the chunk."""
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    monkeypatch.setattr(chunks, "_direct_folders", {})
    monkeypatch.setattr(chunks, "file_system", lambda path: "ext4")
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *args: opened.append(flags) or real_open(path, flags, *args))
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    chunks.write_chunk_file(tmp_path / "0.0.0", data)
    assert (tmp_path / "0.0.0").read_bytes() == data
    assert any(flags & os.O_DIRECT for flags in opened) == direct


def test_file_system_of_a_path_is_read_from_the_mount_table(tmp_path):
    if not Path("/proc/self/mounts").exists():
        pytest.skip("no /proc/self/mounts")
    kinds = {line.split()[2] for line in Path("/proc/self/mounts").read_text().splitlines()}
    assert chunks.file_system(tmp_path) in kinds
    assert chunks.file_system("/proc/self") == "proc"
    device, point, kind = chunks.mount_of(tmp_path)
    assert kind == chunks.file_system(tmp_path) and str(tmp_path.resolve()).startswith(point)
    assert chunks.mount_of("/proc/self")[1:] == ("/proc", "proc")


def test_other_write_errors_are_not_hidden(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_file(tmp_path / "missing" / "chunk", b"data")


@pytest.mark.parametrize("direct", ["1", "0"])
def test_stores_read_back_the_same_with_and_without_direct_io(tmp_path, monkeypatch, direct):
    """WSISEG_DIRECT_IO=0 turns O_DIRECT off; zarr reads the chunks the same either way."""
    monkeypatch.setenv("WSISEG_DIRECT_IO", direct)
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=2)
    level = create_level(group, "0", (3, 100, 150), 64, compressor("lz4"))
    with ThreadPoolExecutor(2) as executor:
        write_block(level, 0, 0, image, executor)
    group.attrs["multiscales"] = ngff.multiscales("s", 1, "mean")
    np.testing.assert_array_equal(SlideStore(tmp_path / "s.zarr").levels[0][:].transpose(1, 2, 0), image)


def _tiles(image: np.ndarray, th: int, tw: int) -> list[tuple[int, int, np.ndarray]]:
    return [
        (y, x, image[y : y + th, x : x + tw].copy())
        for y in range(0, image.shape[0], th)
        for x in range(0, image.shape[1], tw)
    ]


@pytest.mark.parametrize("tile", [(64, 64), (32, 32), (48, 80), (200, 150)])
def test_chunk_grid_cuts_any_tiling_into_the_chunks_of_the_region(tile):
    """Whatever the file's tile size, the grid holds exactly the region's pixels chunk by chunk (edges clipped)."""
    image = np.random.default_rng(1).integers(0, 256, (150, 190, 3), dtype=np.uint8)
    grid = pyramid.chunk_grid(_tiles(image, *tile), 0, 150, 0, 190, 64)
    assert [len(row) for row in grid] == [3, 3, 3]
    for i, row in enumerate(grid):
        for j, piece in enumerate(row):
            np.testing.assert_array_equal(piece, image[64 * i : 64 * (i + 1), 64 * j : 64 * (j + 1)])


def test_chunk_sized_tiles_become_chunks_without_a_copy():
    """The point of the grid: a decoded 512² tile is written as the 512² chunk it is (no paste, no copy)."""
    image = np.random.default_rng(2).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    pieces = _tiles(image, 64, 64)
    grid = pyramid.chunk_grid(pieces, 0, 128, 0, 128, 64)
    assert all(np.shares_memory(grid[y // 64][x // 64], pixels) for y, x, pixels in pieces)


def test_halve_grid_equals_halving_the_assembled_region():
    """Pooling each piece in place gives the 2x2 mean of the whole region, odd right/bottom edges included."""
    image = np.random.default_rng(3).integers(0, 256, (150, 191, 3), dtype=np.uint8)
    grid = pyramid.chunk_grid(_tiles(image, 64, 64), 0, 150, 0, 191, 64)
    np.testing.assert_array_equal(pyramid.halve_grid(grid, "mean"), pyramid.halve(image, "mean"))
    np.testing.assert_array_equal(pyramid.halve_grid(grid, "max"), pyramid.halve(image, "max"))


@pytest.mark.parametrize("how, channels", [("mean", 3), ("max", 0)])
def test_pyramid_writer_streams_the_same_pyramid_as_building_it_afterwards(tmp_path, how, channels):
    """Bands of any height (chunk rows written in the background while later bands arrive) give the
    pyramid that pooling the finished level 0 gives: same shapes, same pixels, at every level."""
    rng = np.random.default_rng(0)
    h, w, chunk, levels = 700, 530, 64, 5
    image = rng.integers(0, 256, (h, w, max(channels, 1)), dtype=np.uint8)
    shape = (channels, h, w) if channels else (h, w)
    streamed = zarr.open_group(tmp_path / "streamed.zarr", mode="w", zarr_format=2)
    with pyramid.PyramidWriter(streamed, shape, levels, chunk, compressor(), how, workers=2) as writer:
        y = 0
        for rows in (1, 63, 130, 64, 200, 17, 225):  # heights across chunk borders, summing to h
            writer.add(image[y : y + rows].copy(), 0)
            y += rows
        assert y == h
    built = zarr.open_group(tmp_path / "built.zarr", mode="w", zarr_format=2)
    create_level(built, "0", shape, chunk, compressor())[...] = image.transpose(2, 0, 1) if channels else image[:, :, 0]
    pyramid.build_pyramid(built, levels, chunk, compressor(), how)
    for k in range(levels):
        assert streamed[str(k)].shape == built[str(k)].shape
        np.testing.assert_array_equal(streamed[str(k)][...], built[str(k)][...])


@pytest.mark.parametrize("side", [32, 48])
def test_block_pyramid_from_blocks_equals_the_pyramid_built_afterwards(tmp_path, side):
    """Blocks of a level fed row by row (odd-sized last block row and column) give the levels above it that
    pooling the whole finished level gives; a block row left incomplete is an error, not a silently short level."""
    rng = np.random.default_rng(3)
    h, w, chunk, levels = 101, 135, 16, 4
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    fed = zarr.open_group(tmp_path / "fed.zarr", mode="w", zarr_format=2)
    with pyramid.BlockPyramid(fed, (3, h, w), levels, chunk, compressor(), "mean", 2, first=1) as above:
        for y in range(0, h, side):
            for x in range(0, w, side):
                above.add(image[y : y + side, x : x + side])
    built = zarr.open_group(tmp_path / "built.zarr", mode="w", zarr_format=2)
    create_level(built, "0", (3, h, w), chunk, compressor())[...] = image.transpose(2, 0, 1)
    pyramid.build_pyramid(built, levels + 1, chunk, compressor(), "mean")
    assert "0" not in fed
    for k in range(1, levels + 1):
        assert fed[str(k)].shape == built[str(k)].shape
        np.testing.assert_array_equal(fed[str(k)][...], built[str(k)][...], err_msg=f"level {k}")
    short = zarr.open_group(tmp_path / "short.zarr", mode="w", zarr_format=2)
    with pytest.raises(RuntimeError, match="block row left incomplete"):
        with pyramid.BlockPyramid(short, (3, h, w), levels, chunk, compressor(), "mean", 2, first=1) as above:
            above.add(image[:side, :side])


@pytest.mark.parametrize(("how", "channels", "codec"), [("mean", 3, "zstd"), ("max", 0, "zstd"), ("mean", 3, "jpeg")])
def test_pyramid_from_chunk_files_equals_pooling_through_zarr(tmp_path, how, channels, codec):
    """Levels built from level 0's chunk files in threads (a local store) equal zarr's own read, pool and
    write (a memory store), odd edges and chunks never written (the fill value) included; each level is
    the 2x2 mean (or max) of the one below."""
    from wsiseg.store.codecs import PlanarJpeg

    make = (lambda: PlanarJpeg(90)) if codec == "jpeg" else compressor
    rng = np.random.default_rng(5)
    h, w, chunk, levels = 333, 459, 64, 4
    image = rng.integers(0, 256, (h, w, max(channels, 1)), dtype=np.uint8)
    image[:128, 128:256] = 0  # two chunks left unwritten: no files, read as the fill value
    shape = (channels, h, w) if channels else (h, w)
    groups = {}
    for name, where in (("files", tmp_path / "files.zarr"), ("zarr", zarr.storage.MemoryStore())):
        group = zarr.open_group(where, mode="w", zarr_format=2)
        level0 = create_level(group, "0", shape, chunk, make())
        for y in range(0, h, chunk):
            for x in range(0, w, chunk):
                if not (y < 128 and 128 <= x < 256):
                    level0[..., y : y + chunk, x : x + chunk] = (
                        image[y : y + chunk, x : x + chunk].transpose(2, 0, 1)
                        if channels
                        else image[y : y + chunk, x : x + chunk, 0]
                    )
        pyramid.build_pyramid(group, levels, chunk, make(), how, workers=2)
        groups[name] = group
    assert not (tmp_path / "files.zarr" / "0" / ("0.0.2" if channels else "0.2")).exists()
    assert chunks.direct_path(groups["files"]["1"]) is not None and chunks.direct_path(groups["zarr"]["1"]) is None
    for k in range(1, levels):
        below = groups["files"][str(k - 1)][...]
        expected = pyramid._pool(below if channels else below[None], how)
        built = groups["files"][str(k)][...]
        assert built.shape == groups["zarr"][str(k)].shape
        np.testing.assert_array_equal(built, groups["zarr"][str(k)][...], err_msg=f"level {k}")
        if codec == "zstd":  # lossless: exactly the pooled level below
            np.testing.assert_array_equal(built if channels else built[None], expected, err_msg=f"level {k}")


@pytest.mark.parametrize("shape", [(3, 700, 900), (700, 900), (4, 300, 520)])
def test_region_from_chunk_files_equals_zarrs_read_padded_and_interleaved(tmp_path, shape):
    """Chunks decoded from their files and laid out channel-last: the same pixels as zarr's read, for boxes
    inside, across edges, wholly outside (fill), and over chunks never written (the array's fill value)."""
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=2)
    array = create_level(root, "0", shape, 256, compressor())
    data = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    array[..., :512, :] = data[..., :512, :]  # the chunk rows below 512 have no files
    boxes = [
        (0, 700, 0, 900),
        (100, 300, 250, 700),
        (-40, 90, 850, 1000),
        (650, 760, -10, 30),
        (800, 900, 0, 50),
        (512, 700, 0, 900),
    ]
    for y0, y1, x0, x1 in boxes:
        expected = chunks.interleave(chunks.read_padded(array, y0, y1, x0, x1, 255))
        got = chunks.read_region(array, y0, y1, x0, x1, 255)
        assert got.shape == expected.shape and np.array_equal(got, expected), (y0, y1, x0, x1)
        buffer = np.zeros((y1 - y0 + 5, x1 - x0, expected.shape[2]), np.uint8)  # into a slice of a larger buffer
        assert chunks.read_region(array, y0, y1, x0, x1, 255, out=buffer[5:]).base is buffer
        assert np.array_equal(buffer[5:], expected) and not buffer[:5].any()
    memory = zarr.create_array(zarr.storage.MemoryStore(), shape=shape, chunks=(*shape[:-2], 256, 256), dtype=np.uint8)
    memory[:] = data  # no chunk files: zarr reads
    assert np.array_equal(
        chunks.read_region(memory, 100, 300, 250, 700, 255),
        chunks.interleave(chunks.read_padded(memory, 100, 300, 250, 700, 255)),
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_planes_read_as_zarr_reads_them(tmp_path, dtype):
    """``read_plane`` (the report's mask bands, metrics, overlays) gives zarr's pixels for any slice of a label
    image, with chunks never written read as 0; uint8 planes come from the chunk files, others through zarr."""
    root = zarr.open_group(tmp_path / "p.zarr", mode="w", zarr_format=2)
    array = create_level(root, "0", (1000, 777), 128, compressor("lz4", 5, "none"), dtype=dtype)
    data = np.random.default_rng(0).integers(0, 3, (1000, 777), dtype=dtype)
    array[:640] = data[:640]  # the chunk rows below 640 have no files
    data[640:] = 0
    for rows, cols in [
        (slice(None), slice(None)),
        (slice(5, 300), slice(700, 900)),
        (slice(990, 2000), slice(None, 10)),
        (slice(-10, None), slice(3, 3)),
        (slice(500, 400), slice(None)),
        (slice(600, 700), slice(128, 512)),
    ]:
        got = chunks.read_plane(array, rows, cols)
        assert got.dtype == dtype and got.shape == data[rows, cols].shape and np.array_equal(got, data[rows, cols]), (
            rows,
            cols,
        )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_region_reads_in_a_forked_child(tmp_path):
    """A child forked after the parent read (e.g. a data-loader worker) reads too: its own decoding threads."""
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=2)
    array = create_level(root, "0", (3, 600, 600), 256, compressor())
    array[:] = np.random.default_rng(0).integers(0, 256, (3, 600, 600), dtype=np.uint8)
    expected = chunks.read_region(array, 0, 600, 0, 600, 255)  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # child: exit 0 only when the read finishes with the same pixels
        code = 0 if np.array_equal(chunks.read_region(array, 0, 600, 0, 600, 255), expected) else 1
        os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child's read hung")
