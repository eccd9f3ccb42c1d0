"""Ingest safety (issue 14): no silent wrong result, no traceback, no bomb; bad input caught before the image work."""

from __future__ import annotations

import json
import logging
import struct
import time

import imagecodecs
import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage.draw import polygon as draw_polygon
from support.images import png_declaring

from wsiseg import convert as convert_module
from wsiseg.annotations.polygons import PolygonMask
from wsiseg.convert import convert_many, convert_slide
from wsiseg.errors import MaskError, SlideError
from wsiseg.store.slide import SlideStore

H, W = 200, 260


@pytest.fixture
def slide(tmp_path):
    path = tmp_path / "slide.tif"
    image = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    tifffile.imwrite(path, image, photometric="rgb", tile=(64, 64), compression="zlib")
    return path


def no_store_left(folder) -> bool:
    return not list(folder.glob("**/*.zarr")) and not list(folder.glob("**/.*.tmp-*"))


def image_work_forbidden(monkeypatch):
    """Make converting the image pixels fail loudly: checks must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the image was converted before the mask was checked")

    monkeypatch.setattr(convert_module, "write_image", refuse)


def write_geojson(path, geometries):
    features = [{"type": "Feature", "geometry": g, "properties": {}} for g in geometries]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def square(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


# ---------------------------------------------------------------------------
# 1. NaN / inf pixels under `uint16: percentile`


def test_nan_and_inf_pixels_do_not_blacken_a_float_slide(tmp_path, caplog):
    ramp = np.tile(np.linspace(0, 1000, W, dtype=np.float32), (H, 1))
    image = np.stack([ramp, ramp, ramp], axis=2)
    image[5, 7] = np.nan
    image[50, 60, 1] = np.inf
    image[100, 100] = -np.inf
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, image, photometric="rgb", tile=(64, 64))
    with caplog.at_level(logging.WARNING, logger="wsiseg.convert"):
        out = convert_slide(path, tmp_path / "f.zarr", uint16="percentile", chunk=64)
    level0 = SlideStore(out).levels[0][:]  # (3, H, W)
    assert level0[:, 100, 200].min() > 150 and level0[:, 100, 2].max() < 20  # the ramp is stretched, not black
    assert (
        level0[:, 5, 7].tolist() == [0, 0, 0] and level0[1, 50, 60] == 0 and level0[:, 100, 100].tolist() == [0, 0, 0]
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("float.tif: 3 pixel(s) with NaN or infinite values mapped to 0" in m for m in warnings), warnings


def test_a_slide_without_any_finite_pixel_is_an_error(tmp_path):
    path = tmp_path / "allnan.tif"
    tifffile.imwrite(path, np.full((64, 80), np.nan, np.float32), tile=(32, 32))
    with pytest.raises(
        SlideError, match=r"allnan.tif: no finite pixel value \(all [\d,]+ values sampled .* NaN or infinite\)"
    ):
        convert_slide(path, tmp_path / "x.zarr", uint16="percentile")
    assert no_store_left(tmp_path)


# ---------------------------------------------------------------------------
# 2. Empty annotations of train/val slides


def test_points_only_geojson_for_a_training_slide_is_refused_before_the_image_work(slide, tmp_path, monkeypatch):
    mask = write_geojson(
        tmp_path / "points.geojson", [{"type": "Point", "coordinates": [10 * i, 10]} for i in range(3)]
    )
    image_work_forbidden(monkeypatch)
    with pytest.raises(
        MaskError,
        match=r"points.geojson: .*train/val slide 'slide' is empty \(3 features: 3 Point, "
        r"0 polygons inside the 260x200 image\).*convert.allow_empty_mask: true",
    ):
        convert_slide(slide, tmp_path / "x.zarr", mask=mask, require_foreground=True)
    assert no_store_left(tmp_path)


def test_polygons_all_outside_the_image_and_an_empty_rle_row(slide, tmp_path, monkeypatch):
    outside = write_geojson(tmp_path / "far.json", [square(1000, 1000, 1100, 1100), square(-50, 10, -10, 40)])
    pd.DataFrame({"id": ["slide"], "encoding": [""]}).to_csv(tmp_path / "rle.csv", index=False)
    image_work_forbidden(monkeypatch)
    with pytest.raises(
        MaskError, match=r"far.json: .*empty \(2 features: 2 Polygon, 0 polygons inside the 260x200 image\)"
    ):
        convert_slide(slide, tmp_path / "x.zarr", mask=outside, require_foreground=True)
    with pytest.raises(MaskError, match=r"rle.csv: .*empty \(the row for id 'slide' has 0 run\(s\)\)"):
        convert_slide(slide, tmp_path / "x.zarr", mask=tmp_path / "rle.csv", require_foreground=True)
    assert no_store_left(tmp_path)


def test_empty_mask_image_or_pixel_free_polygon_is_refused_once_rasterised_and_leaves_no_store(slide, tmp_path):
    mask = tmp_path / "blank.png"
    mask.write_bytes(imagecodecs.png_encode(np.zeros((H, W), np.uint8)))
    with pytest.raises(
        MaskError, match=r"blank.png: .*empty \(mask image read with mask_threshold 0: 0 foreground pixels"
    ):
        convert_slide(slide, tmp_path / "x.zarr", mask=mask, require_foreground=True)
    tiny = write_geojson(tmp_path / "tiny.json", [square(10.2, 10.2, 10.8, 10.8)])  # inside, but between pixel centres
    with pytest.raises(
        MaskError,
        match=r"tiny.json: .*empty \(1 feature: 1 Polygon, 1 polygon inside the 260x200 image: "
        r"0 foreground pixels once rasterised\)",
    ):
        convert_slide(slide, tmp_path / "x.zarr", mask=tiny, require_foreground=True)
    assert no_store_left(tmp_path)


def test_allow_empty_mask_converts_with_a_warning_and_test_slides_need_nothing(slide, tmp_path, caplog):
    mask = write_geojson(tmp_path / "points.geojson", [{"type": "Point", "coordinates": [5, 5]}])
    with caplog.at_level(logging.WARNING, logger="wsiseg.convert"):
        out = convert_slide(slide, tmp_path / "a.zarr", mask=mask, require_foreground=True, allow_empty_mask=True)
    assert any("points.geojson" in r.getMessage() and "allow_empty_mask" in r.getMessage() for r in caplog.records)
    assert SlideStore(out).mask_levels[0][:].max() == 0
    out = convert_slide(slide, tmp_path / "t.zarr", mask=mask)  # a test slide: an empty annotation is fine
    assert SlideStore(out).mask_levels[0][:].max() == 0


def test_convert_many_checks_foreground_of_its_train_slides_before_converting_any(slide, tmp_path, monkeypatch):
    good = write_geojson(tmp_path / "good.json", [square(10, 10, 50, 50)])
    empty = write_geojson(tmp_path / "empty.json", [])
    items = [("a", slide, good), ("b", slide, empty), ("c", slide, empty)]
    image_work_forbidden(monkeypatch)
    with pytest.raises(MaskError, match=r"empty.json: .*train/val slide 'b' is empty \(0 features, 0 polygons"):
        convert_many(items, tmp_path / "out", foreground_slides=["a", "b"])
    assert no_store_left(tmp_path)
    monkeypatch.undo()
    stores = convert_many(items, tmp_path / "out", foreground_slides=["a"])  # b and c are test slides
    assert [p.name for p in stores] == ["a.zarr", "b.zarr", "c.zarr"]


# ---------------------------------------------------------------------------
# 3. Polygon rasterisation: exact where skimage is exact, fast on huge outlines


def rasterise(polygons_geojson, tmp_path, shape, chunk=64) -> np.ndarray:
    path = write_geojson(tmp_path / "p.geojson", polygons_geojson)
    source = PolygonMask(path, shape)
    out = np.zeros(shape, np.uint8)
    for y0, x0, block in source.blocks(chunk):
        out[y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]] = block
    return out


def reference(rings, shape) -> np.ndarray:
    """skimage.draw.polygon on the whole image: exterior filled, holes erased."""
    out = np.zeros(shape, np.uint8)
    for value, ring in zip([1] + [0] * (len(rings) - 1), rings):
        xy = np.asarray(ring, float)
        rows, cols = draw_polygon(xy[:, 1], xy[:, 0], shape=shape)
        out[rows, cols] = value
    return out


def test_rasterised_polygons_match_skimage_on_the_whole_image(tmp_path):
    shape = (300, 400)
    # integer and half-pixel vertices, a hole, parts outside the image: pixel for pixel what skimage gives
    exterior = [[20, 15], [380, 40], [350.5, 290.5], [200, 200], [-30, 310], [20, 15]]
    hole = [[100, 60], [200, 60], [150.5, 150], [100, 60]]
    geometry = {"type": "Polygon", "coordinates": [exterior, hole]}
    np.testing.assert_array_equal(rasterise([geometry], tmp_path, shape, chunk=64), reference([exterior, hole], shape))
    # a 4,000-vertex star with float coordinates crossing tile borders many times
    rng = np.random.default_rng(3)
    angles = np.linspace(0, 2 * np.pi, 4000, endpoint=False)
    radius = 120 + 60 * rng.random(4000)
    star = np.column_stack([200 + radius * np.cos(angles), 150 + radius * np.sin(angles)])
    ring = np.vstack([star, star[:1]]).tolist()
    got = rasterise([{"type": "Polygon", "coordinates": [ring]}], tmp_path, shape, chunk=64)
    want = reference([ring], shape)
    iou = np.logical_and(got, want).sum() / np.logical_or(got, want).sum()
    assert iou > 0.999, iou
    assert np.count_nonzero(got != want) <= 5  # only float ties on the boundary may differ


def test_a_polygon_with_200000_vertices_rasterises_in_seconds(tmp_path):
    """10,000 vertices took 103 s before (skimage tests every pixel against every vertex)."""
    n, shape = 200_000, (1024, 1024)
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = 400 + 20 * np.sin(angles * 997) + np.random.default_rng(0).random(n)
    ring = np.column_stack([512 + radius * np.cos(angles), 512 + radius * np.sin(angles)])
    ring = np.vstack([ring, ring[:1]]).tolist()
    start = time.perf_counter()
    got = rasterise([{"type": "Polygon", "coordinates": [ring]}], tmp_path, shape, chunk=256)
    seconds = time.perf_counter() - start
    assert seconds < 20, seconds
    area = 0.5 * abs(
        np.dot(np.asarray(ring)[:-1, 0], np.roll(np.asarray(ring)[:-1, 1], 1))
        - np.dot(np.asarray(ring)[:-1, 1], np.roll(np.asarray(ring)[:-1, 0], 1))
    )
    assert abs(got.sum() - area) / area < 0.01  # the pixels cover the polygon's area


# ---------------------------------------------------------------------------
# 4. One-line errors instead of tracebacks


def test_huge_rle_value_names_the_file_and_value(slide, tmp_path):
    pd.DataFrame({"id": ["slide"], "encoding": ["1 10000000000000000000000"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(
        MaskError, match=r"t.csv \(id slide\): RLE value 10000000000000000000000 is too large for any image"
    ):
        convert_slide(slide, tmp_path / "x.zarr", mask=tmp_path / "t.csv")
    assert no_store_left(tmp_path)


def test_nan_polygon_coordinate_names_the_file_and_feature(slide, tmp_path):
    ring = [[0, 0], [10, float("nan")], [10, 10], [0, 0]]
    mask = write_geojson(tmp_path / "nan.geojson", [square(1, 1, 5, 5), {"type": "Polygon", "coordinates": [ring]}])
    with pytest.raises(MaskError, match=r"nan.geojson: feature 1 has a non-finite coordinate \(NaN or infinity\)"):
        convert_slide(slide, tmp_path / "x.zarr", mask=mask)
    assert no_store_left(tmp_path)


def test_tiff_header_declaring_more_pixels_than_its_tiles_cover(slide, tmp_path):
    with tifffile.TiffFile(slide) as tif:
        tags = tif.pages[0].tags
        width_at, length_at = tags["ImageWidth"].valueoffset, tags["ImageLength"].valueoffset
        fmt = "<H" if tags["ImageWidth"].dtype == 3 else "<I"
    data = bytearray(slide.read_bytes())
    data[width_at : width_at + struct.calcsize(fmt)] = struct.pack(fmt, 1000)
    data[length_at : length_at + struct.calcsize(fmt)] = struct.pack(fmt, 900)
    bad = tmp_path / "edited.tif"
    bad.write_bytes(bytes(data))
    with pytest.raises(
        SlideError,
        match=r"edited.tif: the header declares 1000x900 px, which needs 240 tiles of 64x64, "
        r"but the file lists only 20",
    ):
        convert_slide(bad, tmp_path / "x.zarr")
    assert no_store_left(tmp_path)


def test_a_directory_given_as_the_image(tmp_path):
    (tmp_path / "scans.tif").mkdir()
    with pytest.raises(SlideError, match=r"scans.tif: is a directory, expected an image file"):
        convert_slide(tmp_path / "scans.tif", tmp_path / "x.zarr")


# ---------------------------------------------------------------------------
# 5. Decompression bombs


def test_png_declaring_100000_squared_pixels_is_refused_before_decoding(slide, tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(100_000, 100_000))
    assert bomb.stat().st_size < 10_000

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(imagecodecs, "imread", no_decoding)
    pattern = r"bomb.png: the PNG header declares 100000x100000 px \(10,000,000,000 px\), over the limit of 1,000,000,000 px.*convert.max_decoded_pixels"
    with pytest.raises(SlideError, match=pattern):
        convert_slide(bomb, tmp_path / "x.zarr")
    with pytest.raises(MaskError, match=pattern):  # the same limit guards PNG masks
        convert_slide(slide, tmp_path / "x.zarr", mask=bomb)
    assert no_store_left(tmp_path)


def test_jpeg_size_read_from_its_frame_header_and_the_limit_can_be_raised(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(imagecodecs.jpeg8_encode(np.full((120, 90, 3), 128, np.uint8)))
    with pytest.raises(
        SlideError, match=r"photo.jpg: the JPEG header declares 90x120 px \(10,800 px\), over the limit of 10,000 px"
    ):
        convert_slide(path, tmp_path / "x.zarr", max_decoded_pixels=10_000)
    out = convert_slide(path, tmp_path / "ok.zarr", max_decoded_pixels=10_800)
    assert SlideStore(out).levels[0].shape == (3, 120, 90)
