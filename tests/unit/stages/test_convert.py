import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from wsiseg import rle
from wsiseg.convert import convert_slide
from wsiseg.errors import MaskError, SlideError
from wsiseg.store.slide import SlideStore


def test_level0_equals_tifffile_and_pyramid_is_ngff(rgb_tiff, tmp_path):
    path, image = rgb_tiff
    out = convert_slide(path, tmp_path / "s.zarr", chunk=128)
    store = SlideStore(out)
    np.testing.assert_array_equal(store.levels[0][:].transpose(1, 2, 0), tifffile.imread(path))
    assert [lvl.shape for lvl in store.levels] == [(3, 300, 420), (3, 150, 210), (3, 75, 105)]
    assert store.levels[0].chunks == (3, 128, 128)
    meta = zarr.open_group(out, mode="r").attrs["multiscales"][0]
    assert meta["version"] == "0.4"
    assert [a["name"] for a in meta["axes"]] == ["c", "y", "x"]
    assert meta["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]
    # level 1 is the 2x2 mean of level 0
    expected = image[:2, :2].astype(float).mean(axis=(0, 1))
    np.testing.assert_allclose(store.levels[1][:, 0, 0], expected, atol=1)


def test_demo_slide_with_rle_mask(tiny_demo, tmp_path):
    out = convert_slide(
        tiny_demo / "demo_0.tiff", tmp_path / "d.zarr", mask=tiny_demo / "train.csv", slide_id="demo_0", chunk=128
    )
    store = SlideStore(out)
    np.testing.assert_array_equal(store.levels[0][:].transpose(1, 2, 0), tifffile.imread(tiny_demo / "demo_0.tiff"))
    table = pd.read_csv(tiny_demo / "train.csv").set_index("id")
    truth = rle.decode(table.loc["demo_0", "encoding"], (384, 512))
    assert truth.sum() > 0
    np.testing.assert_array_equal(store.mask_plane(0), truth)
    labels = zarr.open_group(out, mode="r")["labels"]
    assert labels.attrs["labels"] == ["mask"]
    assert "image-label" in labels["mask"].attrs


def test_geojson_polygons_with_holes_and_multipolygons(rgb_tiff, tmp_path):
    path, _ = rgb_tiff
    square = [[10, 20], [110, 20], [110, 120], [10, 120], [10, 20]]
    hole = [[40, 50], [80, 50], [80, 90], [40, 90], [40, 50]]
    far = [[[[300, 200], [340, 200], [340, 240], [300, 240], [300, 200]]]]
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square, hole]}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": far}},
    ]
    (tmp_path / "a.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    mask = SlideStore(convert_slide(path, tmp_path / "p.zarr", mask=tmp_path / "a.json")).mask_plane(0)
    assert mask[30, 20] == 1 and mask[110, 100] == 1  # inside the square (row, col)
    assert mask[70, 60] == 0  # inside the hole
    assert mask[220, 320] == 1  # the MultiPolygon
    assert mask[5, 5] == 0 and mask[200, 200] == 0
    assert abs(int(mask.sum()) - (100 * 100 - 40 * 40 + 40 * 40)) < 600


def test_planar_and_grayscale_layouts(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, 2, 0), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "gray.tif", rgb[:, :, 0])
    tifffile.imwrite(tmp_path / "hubmap.tif", np.moveaxis(rgb, 2, 0)[None, None])
    for name in ("planar", "hubmap"):
        store = SlideStore(convert_slide(tmp_path / f"{name}.tif", tmp_path / f"{name}.zarr"))
        np.testing.assert_array_equal(store.levels[0][:].transpose(1, 2, 0), rgb)
    gray = SlideStore(convert_slide(tmp_path / "gray.tif", tmp_path / "gray.zarr")).levels[0][:]
    assert all(np.array_equal(gray[c], rgb[:, :, 0]) for c in range(3))


def test_mask_image_label_values_become_foreground(rgb_tiff, tmp_path):
    path, _ = rgb_tiff
    labels = np.zeros((300, 420), np.uint16)
    labels[10:20, 10:20] = 1
    labels[50:60, 50:60] = 300  # instance ids beyond uint8
    tifffile.imwrite(tmp_path / "m.tif", labels)
    mask = SlideStore(convert_slide(path, tmp_path / "m.zarr", mask=tmp_path / "m.tif")).mask_plane(0)
    assert mask.sum() == 200 and mask[15, 15] == 1 and mask[55, 55] == 1


def test_unreadable_tiff_names_the_file(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(SlideError, match="broken.tif"):
        convert_slide(bad, tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()


def test_mask_shape_mismatch_is_rejected_before_writing(rgb_tiff, tmp_path):
    path, _ = rgb_tiff
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((10, 10), np.uint8))
    with pytest.raises(MaskError, match=r"small.tif: mask shape \(10, 10\) differs from image shape \(300, 420\)"):
        convert_slide(path, tmp_path / "x.zarr", mask=tmp_path / "small.tif")
    assert not list(tmp_path.glob("*.zarr")) and not list(tmp_path.glob(".*tmp*"))


def test_rle_past_end_and_missing_id(rgb_tiff, tmp_path):
    path, _ = rgb_tiff
    pd.DataFrame({"id": ["slide"], "encoding": [f"{300 * 420} 5"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(MaskError, match="t.csv.*past the image end"):
        convert_slide(path, tmp_path / "x.zarr", mask=tmp_path / "t.csv")
    with pytest.raises(MaskError, match="no row with id 'other'"):
        convert_slide(path, tmp_path / "x.zarr", mask=tmp_path / "t.csv", slide_id="other")


def test_failed_conversion_keeps_previous_store(rgb_tiff, tmp_path):
    path, _ = rgb_tiff
    out = convert_slide(path, tmp_path / "s.zarr")
    (tmp_path / "bad.csv").write_text("id,encoding\nslide,1 999999999\n")
    with pytest.raises(MaskError):
        convert_slide(path, out, mask=tmp_path / "bad.csv")
    assert SlideStore(out).levels[0].shape == (3, 300, 420)


def test_store_validates_with_standard_ome_ngff_readers(rgb_tiff, tmp_path):
    """ome-zarr's reader and the ome-zarr-models v0.4 validator accept the image and its label image."""
    reader_module = pytest.importorskip("ome_zarr.reader")
    io = pytest.importorskip("ome_zarr.io")
    models = pytest.importorskip("ome_zarr_models.v04")
    from ome_zarr_models.v04.image_label import ImageLabel

    path, image = rgb_tiff
    (tmp_path / "a.json").write_text(
        json.dumps([{"geometry": {"type": "Polygon", "coordinates": [[[5, 5], [50, 5], [50, 40], [5, 5]]]}}])
    )
    out = convert_slide(path, tmp_path / "s.zarr", mask=tmp_path / "a.json", chunk=128)
    nodes = list(reader_module.Reader(io.parse_url(str(out)))())
    root = next(n for n in nodes if n.load(reader_module.Multiscales) and not n.load(reader_module.Label))
    label = next(n for n in nodes if n.load(reader_module.Label))
    assert [d.shape for d in root.data] == [(3, 300, 420), (3, 150, 210), (3, 75, 105)]
    np.testing.assert_array_equal(np.asarray(root.data[0]).transpose(1, 2, 0), image)
    assert [a["name"] for a in root.metadata["axes"]] == ["c", "y", "x"]
    assert int(np.asarray(label.data[0]).sum()) > 0
    group = zarr.open_group(out, mode="r")
    assert models.Image.from_zarr(group).attributes.multiscales[0].datasets[2].path == "2"
    assert ImageLabel.from_zarr(group["labels/mask"]).attributes.image_label.source.image == "../../"


def test_chunk_size_and_compressor_are_configurable(rgb_tiff, tmp_path):
    path, _ = rgb_tiff
    out = convert_slide(path, tmp_path / "s.zarr", chunk=64, compression="lz4", level=3)
    array = zarr.open_group(out, mode="r")["0"]
    assert array.chunks == (3, 64, 64)
    codec = array.metadata.compressor
    assert (codec.cname, codec.clevel) == ("lz4", 3)


@pytest.mark.parametrize(
    "storage",
    [
        {"tile": (64, 64), "compression": "jpeg"},
        {"tile": (48, 80), "compression": "zlib"},
        {"tile": (32, 32), "compression": "zlib"},
        {"tile": (256, 256), "compression": "zlib"},
        {"rowsperstrip": 24, "compression": "zlib"},
    ],
    ids=[
        "tiles-equal-chunks",
        "tiles-across-chunks",
        "tiles-inside-chunks",
        "tiles-larger-than-chunks",
        "stripped-bands",
    ],
)
def test_one_pass_pyramid_equals_pyramid_built_from_level0(tmp_path, storage):
    """Blocks (tiled: chunks taken from the decoded tiles, whatever their size) and bands (stripped) build
    every level on the fly; level 0 is what tifffile decodes and each level equals the 2x2 mean of the one below."""
    from wsiseg.store.chunks import compressor, create_level
    from wsiseg.store.pyramid import build_pyramid

    image = np.random.default_rng(4).integers(0, 256, (700, 1100, 3), dtype=np.uint8)  # several blocks, odd halves
    tifffile.imwrite(tmp_path / "s.tif", image, photometric="rgb", **storage)
    store = SlideStore(convert_slide(tmp_path / "s.tif", tmp_path / "s.zarr", chunk=64))
    assert len(store.levels) == 6
    np.testing.assert_array_equal(store.levels[0][:].transpose(1, 2, 0), tifffile.imread(tmp_path / "s.tif"))
    reference = zarr.open_group(tmp_path / "ref.zarr", mode="w", zarr_format=2)
    create_level(reference, "0", store.levels[0].shape, 64, compressor())[:] = store.levels[0][:]
    build_pyramid(reference, 6, 64, compressor(), "mean")
    for k, level in enumerate(store.levels):
        np.testing.assert_array_equal(level[:], reference[str(k)][:], err_msg=f"level {k}")


def test_tiles_larger_than_a_block_are_decoded_once(tmp_path, monkeypatch):
    """Blocks grow to the tile size, so a large-tiled file does not decode each tile several times."""
    from wsiseg.readers.slide import SourceSlide

    image = np.random.default_rng(6).integers(0, 256, (256, 300, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", image, photometric="rgb", tile=(256, 256), compression="zlib")
    reads = []
    original = SourceSlide.read_pieces
    monkeypatch.setattr(SourceSlide, "read_pieces", lambda self, *box: reads.append(box) or original(self, *box))
    store = SlideStore(convert_slide(tmp_path / "big.tif", tmp_path / "b.zarr", chunk=64))  # 64 << 3 = 512 >= 256
    np.testing.assert_array_equal(store.levels[0][:].transpose(1, 2, 0), image)
    assert reads == [(0, 256, 0, 300)]
    reads.clear()
    store = SlideStore(convert_slide(tmp_path / "big.tif", tmp_path / "c.zarr", chunk=16))  # 16 << 3 = 128 < 256
    np.testing.assert_array_equal(store.levels[0][:].transpose(1, 2, 0), image)
    assert reads == [(0, 256, 0, 256), (0, 256, 256, 300)]


@pytest.mark.parametrize("compression,shuffle", [("zstd", "none"), ("lz4", "byte"), ("blosclz", "bit")])
def test_codec_and_shuffle_are_recorded_and_lossless(rgb_tiff, tmp_path, compression, shuffle):
    path, image = rgb_tiff
    out = convert_slide(path, tmp_path / "s.zarr", chunk=128, compression=compression, level=1, shuffle=shuffle)
    level0 = zarr.open_group(out, mode="r")["0"]
    codec = level0.metadata.compressor.get_config()
    assert codec["cname"] == compression and codec["shuffle"] == {"none": 0, "byte": 1, "bit": 2}[shuffle]
    np.testing.assert_array_equal(level0[:].transpose(1, 2, 0), image)


def test_mask_threshold_drops_jpeg_ringing(rgb_tiff, tmp_path):
    """JPEG-saved 0/255 masks have small non-zero values around edges: a threshold keeps them background."""
    path, image = rgb_tiff
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[50:150, 60:200] = 255
    mask[0:20, 0:20] = 9  # compression ringing
    tifffile.imwrite(tmp_path / "m.tif", mask)
    for threshold, expected in ((0, 100 * 140 + 400), (127, 100 * 140)):
        out = convert_slide(path, tmp_path / f"t{threshold}.zarr", mask=tmp_path / "m.tif", mask_threshold=threshold)
        assert SlideStore(out).mask_levels[0][:].sum() == expected


def test_a_bad_file_stops_a_slide_group_before_any_conversion(rgb_tiff, tmp_path):
    """convert_many (slides_per_job > 1) checks every image and mask of the group first."""
    from wsiseg.convert import convert_many

    path, image = rgb_tiff
    tifffile.imwrite(tmp_path / "small_mask.tif", np.zeros((10, 10), np.uint8))
    items = [("good", path, None), ("bad", path, tmp_path / "small_mask.tif")]
    with pytest.raises(MaskError, match=r"small_mask.tif: mask shape \(10, 10\) differs"):
        convert_many(items, tmp_path / "group", chunk=128)
    assert not (tmp_path / "group" / "good.zarr").exists()
    convert_many(items[:1], tmp_path / "group", chunk=128)
    np.testing.assert_array_equal(SlideStore(tmp_path / "group" / "good.zarr").levels[0][:].transpose(1, 2, 0), image)


@pytest.mark.parametrize(
    ("storage", "options", "path", "waits"),
    [
        ({"tile": (64, 64), "compression": "zlib"}, {}, "decode", "waiting for decoded tiles"),
        ({"rowsperstrip": 32, "compression": "zlib"}, {}, "decode", "waiting for decoded bands"),
        ({"tile": (64, 64), "compression": "jpeg"}, {"compression": "jpeg"}, "tile-copy", "waiting for tiles read"),
    ],
    ids=["blocks", "bands", "tile-copy"],
)
def test_the_log_says_where_converts_time_went(tmp_path, caplog, storage, options, path, waits):
    """Each conversion path logs the image's time and the main thread's time per step (waiting for the source,
    pooling, waiting for the writer threads): steps that add up to no more than the image's time."""
    import logging

    y, x = np.mgrid[
        0:300, 0:420
    ]  # smooth: a JPEG tile's 1/2-scale decode then matches its 2x2 mean, as tile copy checks
    image = np.stack([120 + 60 * np.sin(x / 9 + c) * np.cos(y / 13) for c in range(3)], -1).astype(np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", image, photometric="rgb", **storage)
    with caplog.at_level(logging.INFO, logger="wsiseg"):
        convert_slide(tmp_path / "s.tif", tmp_path / "s.zarr", chunk=64, **options)
    [record] = [r for r in caplog.records if hasattr(r, "step_seconds")]
    steps = dict(record.step_seconds)
    total = steps.pop("image")
    assert f"image written in {total:.2f} s" in record.getMessage() and f"{path});" in record.getMessage()
    assert waits in steps and any("writer threads" in name for name in steps)
    assert 0 < sum(steps.values()) <= total + 0.01
