"""Chunk file writing: O_DIRECT where the file system allows it, plain writes elsewhere, same bytes either way."""

import errno
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr

from wsiseg import store
from wsiseg.store import SlideStore, compressor, create_level, write_block, write_file


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
    monkeypatch.setattr(store, "_buffered_only", set())
    for name in ("a", "b"):
        write_file(tmp_path / name, b"chunk " + name.encode())
    assert (tmp_path / "a").read_bytes() == b"chunk a" and (tmp_path / "b").read_bytes() == b"chunk b"
    assert calls.count(True) == 1  # asked once per folder


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
    group.attrs["multiscales"] = store.multiscales("s", 1, "mean")
    np.testing.assert_array_equal(SlideStore(tmp_path / "s.zarr").levels[0][:].transpose(1, 2, 0), image)
