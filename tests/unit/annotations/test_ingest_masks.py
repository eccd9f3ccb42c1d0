"""Mask ingestion: polygons (clipped with a warning), binary/instance/colour-coded mask images."""

from __future__ import annotations

import json
import logging

import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

from wsiseg.annotations.images import load_palette, parse_palette
from wsiseg.convert import convert_slide
from wsiseg.errors import MaskError
from wsiseg.store.slide import SlideStore

H, W = 120, 160


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, np.full((H, W, 3), 200, np.uint8), photometric="rgb", tile=(64, 64))
    return path


def labels_of(image, mask, tmp_path, **options) -> np.ndarray:
    out = convert_slide(image, tmp_path / "m.zarr", mask=mask, chunk=64, **options)
    return SlideStore(out).mask_plane(0)


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def test_polygons_crossing_or_outside_the_image_are_clipped_with_a_warning(image, tmp_path, caplog):
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(140, 100, 200, 150)]}},  # crosses
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(300, 300, 320, 320)]}},  # outside
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square(10, 10, 30, 30)]}},  # inside
    ]
    (tmp_path / "p.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    with caplog.at_level(logging.WARNING, logger="wsiseg.annotations.polygons"):
        mask = labels_of(image, tmp_path / "p.geojson", tmp_path)
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "p.geojson: 1 of 3 polygon(s) lie entirely outside the 160x120 image" in m and "1 cross its border" in m
        for m in warning
    ), warning
    assert mask[102:, 142:].all()  # the crossing polygon, clipped at the image border
    assert mask[15, 15] == 1 and mask[60, 80] == 0


def test_hubmap_list_with_island_inside_a_hole(image, tmp_path):
    """HuBMAP JSON is a bare list of features; an island drawn inside another polygon's hole stays foreground."""
    ring = {"geometry": {"type": "Polygon", "coordinates": [square(10, 10, 110, 100), square(30, 30, 90, 80)]}}
    island = {"geometry": {"type": "Polygon", "coordinates": [square(50, 50, 70, 60)]}}
    (tmp_path / "h.json").write_text(json.dumps([island, ring]))
    mask = labels_of(image, tmp_path / "h.json", tmp_path)
    assert mask[20, 20] == 1 and mask[40, 40] == 0 and mask[55, 60] == 1


def test_binary_255_and_instance_labels_become_foreground(image, tmp_path):
    binary = np.zeros((H, W), np.uint8)
    binary[10:20, 30:50] = 255
    (tmp_path / "b.png").write_bytes(imagecodecs.png_encode(binary))
    instances = np.zeros((H, W), np.int32)
    instances[5:9, 5:9], instances[50:60, 70:90] = 3, 70000
    tifffile.imwrite(tmp_path / "i.tif", instances)
    np.testing.assert_array_equal(labels_of(image, tmp_path / "b.png", tmp_path), binary // 255)
    np.testing.assert_array_equal(labels_of(image, tmp_path / "i.tif", tmp_path), (instances > 0).astype(np.uint8))


def colour_mask() -> np.ndarray:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[10:40, 10:40] = (255, 0, 0)
    rgb[50:90, 60:150] = (0, 128, 255)
    return rgb


def test_colour_coded_mask_maps_to_class_indices(image, tmp_path):
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(colour_mask()))
    mask = labels_of(image, tmp_path / "c.png", tmp_path, palette={"#ff0000": 1, "0,128,255": 2})
    expected = np.zeros((H, W), np.uint8)
    expected[10:40, 10:40], expected[50:90, 60:150] = 1, 2
    np.testing.assert_array_equal(mask, expected)
    label = zarr.open_group(tmp_path / "m.zarr", mode="r")["labels/mask"]
    colors = {c["label-value"]: c["rgba"][:3] for c in label.attrs["image-label"]["colors"]}
    assert colors == {1: [255, 0, 0], 2: [0, 128, 255]}
    as_list = labels_of(image, tmp_path / "c.png", tmp_path, palette=[[0, 0, 0], [255, 0, 0], [0, 128, 255]])
    np.testing.assert_array_equal(as_list, expected)


def test_unknown_palette_colours_are_listed(image, tmp_path):
    rgb = colour_mask()
    rgb[100:110, 0:10] = (1, 2, 3)
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(rgb))
    with pytest.raises(
        MaskError, match=r"c.png: 2 colour\(s\) not in the palette: #0080ff \(3600 px\), #010203 \(100 px\)"
    ):
        convert_slide(image, tmp_path / "x.zarr", mask=tmp_path / "c.png", palette={"#ff0000": 1})
    assert not (tmp_path / "x.zarr").exists()


def test_palette_needs_an_rgb_mask_and_valid_entries(image, tmp_path):
    tifffile.imwrite(tmp_path / "g.tif", np.zeros((H, W), np.uint8))
    with pytest.raises(MaskError, match="g.tif: a palette needs an 8-bit RGB mask image, got 1 channel"):
        convert_slide(image, tmp_path / "x.zarr", mask=tmp_path / "g.tif", palette={"#ff0000": 1})
    with pytest.raises(MaskError, match="cannot read colour 'red'"):
        parse_palette({"red": 1})
    with pytest.raises(MaskError, match="class index for '#ff0000' must be an integer 0..255"):
        parse_palette({"#ff0000": 300})


def test_palette_from_json_text_or_file(image, tmp_path):
    """The CLI's --palette: JSON text, or a .json file holding the same."""
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(colour_mask()))
    (tmp_path / "palette.json").write_text(json.dumps([[0, 0, 0], [0, 128, 255], [255, 0, 0]]))
    for text, red in (('{"#ff0000": 1, "#0080ff": 2}', 1), (str(tmp_path / "palette.json"), 2)):
        mask = labels_of(image, tmp_path / "c.png", tmp_path, palette=load_palette(text))
        assert mask[20, 20] == red and mask[60, 100] == 3 - red
    with pytest.raises(MaskError, match="palette 'red=1': not JSON"):
        load_palette("red=1")
