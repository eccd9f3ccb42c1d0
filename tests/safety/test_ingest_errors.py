"""Bad input: one clear error naming the file, before heavy work; never a store that looks complete."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import tifffile

from wsiseg import convert as convert_module
from wsiseg.convert import convert_slide
from wsiseg.errors import MaskError, SlideError
from wsiseg.store import chunks as store_module
from wsiseg.store.slide import SlideStore


@pytest.fixture
def slide(tmp_path):
    path = tmp_path / "slide.tif"
    image = np.random.default_rng(1).integers(0, 256, (200, 260, 3), dtype=np.uint8)
    tifffile.imwrite(path, image, photometric="rgb", tile=(64, 64), compression="zlib")
    return path


def no_store_left(folder) -> bool:
    return not list(folder.glob("*.zarr")) and not list(folder.glob(".*.tmp-*"))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"II*\x00garbage", "cannot read as TIFF"),
        (b"%PDF-1.4 not an image at all", "cannot read as TIFF"),
    ],
    ids=["empty", "bad-header", "not-a-tiff"],
)
def test_unreadable_files_name_the_file(tmp_path, content, message):
    bad = tmp_path / "scan.tif"
    bad.write_bytes(content)
    with pytest.raises(SlideError, match=f"scan.tif: {message}"):
        convert_slide(bad, tmp_path / "x.zarr")
    assert no_store_left(tmp_path)


def test_truncated_tiff_is_rejected_before_decoding(slide, tmp_path):
    data = slide.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SlideError, match=r"cut.tif: truncated file: image data ends at byte [\d,]+ but the file has"):
        convert_slide(cut, tmp_path / "x.zarr")
    assert no_store_left(tmp_path)


def test_corrupt_tile_data_names_the_file(slide, tmp_path):
    with tifffile.TiffFile(slide) as tif:
        offset = tif.pages[0].dataoffsets[5]
    data = bytearray(slide.read_bytes())
    data[offset : offset + 64] = b"\xff" * 64  # a broken deflate stream in tile 5
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(bytes(data))
    with pytest.raises(SlideError, match="corrupt.tif: cannot decode"):
        convert_slide(bad, tmp_path / "x.zarr")
    assert no_store_left(tmp_path)


def test_zero_size_image(tmp_path):
    path = tmp_path / "empty.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(path, np.zeros((0, 10), np.uint8))
    with pytest.raises(SlideError, match=r"empty.tif: zero-size image \(0, 10\)"):
        convert_slide(path, tmp_path / "x.zarr")


def test_missing_image_and_mask(slide, tmp_path):
    with pytest.raises(SlideError, match="nope.tif: image file not found"):
        convert_slide(tmp_path / "nope.tif", tmp_path / "x.zarr")
    with pytest.raises(MaskError, match="nope.csv: mask file not found"):
        convert_slide(slide, tmp_path / "x.zarr", mask=tmp_path / "nope.csv")


def test_overlapping_rle_runs(slide, tmp_path):
    pd.DataFrame({"id": ["slide"], "encoding": ["10 20 25 5"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(MaskError, match=r"t.csv \(id slide\): RLE runs overlap or are out of order at pair 2"):
        convert_slide(slide, tmp_path / "x.zarr", mask=tmp_path / "t.csv")
    assert no_store_left(tmp_path)


def test_unreadable_polygons(slide, tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(MaskError, match=r"a.json: cannot read polygons \(JSONDecodeError"):
        convert_slide(slide, tmp_path / "x.zarr", mask=tmp_path / "a.json")


@pytest.mark.parametrize("layout", ["tiled", "stripped"])
def test_interrupted_conversion_leaves_no_complete_looking_store(slide, tmp_path, monkeypatch, layout):
    """An exception half-way through writing (e.g. disk full, Ctrl-C) removes the temporary store
    and keeps the previous good store at the target untouched (block path and band path)."""
    if layout == "stripped":
        stripped = tmp_path / "stripped.tif"
        tifffile.imwrite(stripped, tifffile.imread(slide), photometric="rgb", rowsperstrip=16, compression="zlib")
        slide = stripped
    out = convert_slide(slide, tmp_path / "s.zarr", chunk=64)
    before = SlideStore(out).levels[0][:]
    written = []

    class Boom(RuntimeError):
        pass

    def failing_write(array, y0, x0, grid, executor=None, wait=True):
        if len(written) == 2:
            raise Boom("disk full")
        written.append((y0, x0))
        return original_write(array, y0, x0, grid, executor, wait)

    original_write = store_module.write_grid  # both paths write through it (write_block too)
    monkeypatch.setattr(store_module, "write_grid", failing_write)
    monkeypatch.setattr(convert_module, "write_grid", failing_write)
    with pytest.raises(Boom):
        convert_slide(slide, out, chunk=64)
    assert len(written) == 2  # it failed mid-write, not before starting
    assert not list(tmp_path.glob(".*.tmp-*"))
    np.testing.assert_array_equal(SlideStore(out).levels[0][:], before)
    with pytest.raises(Boom):
        convert_slide(slide, tmp_path / "new.zarr", chunk=64)
    assert not (tmp_path / "new.zarr").exists()


def test_prefetch_hands_on_errors_and_stops_when_abandoned():
    """The background band reader re-raises a decoding error in the writer and stops when the writer stops."""
    from wsiseg.utils.prefetch import prefetch

    def failing():
        yield 1
        raise SlideError("slide.tif: cannot decode the image below row 512")

    bands = prefetch(failing())
    assert next(bands) == 1
    with pytest.raises(SlideError, match="below row 512"):
        next(bands)
    produced = []

    def endless():
        for i in range(10_000):
            produced.append(i)
            yield i

    bands = prefetch(endless(), depth=1)
    assert next(bands) == 0
    bands.close()
    assert len(produced) <= 4  # read ahead by at most a band or two, then stopped


def test_prefetch_starts_before_the_first_request_and_stops_unused():
    """The reader starts as soon as it is made (the first band decodes while the writer creates its arrays),
    and one closed or dropped before it was ever iterated stops its thread."""
    import threading

    from wsiseg.utils.prefetch import prefetch

    started, produced = threading.Event(), []

    def endless():
        for i in range(10_000):
            produced.append(i)
            started.set()
            yield i

    bands = prefetch(endless(), depth=2, name="test-early")
    assert started.wait(5)  # produced without anyone asking
    bands.close()
    assert len(produced) <= 3 and list(bands) == []
    prefetch(endless(), name="test-dropped")  # dropped at once
    assert not any(t.name.startswith("test-") for t in threading.enumerate())
