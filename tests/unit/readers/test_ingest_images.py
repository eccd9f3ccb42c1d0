"""Image ingestion: every TIFF layout, storage and pixel type converts to the level 0 tifffile decodes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from wsiseg.convert import convert_slide
from wsiseg.errors import SlideError
from wsiseg.readers import limits
from wsiseg.readers.slide import SourceSlide
from wsiseg.readers.tiff import StripStreamReader
from wsiseg.store.slide import SlideStore

H, W = 150, 230  # odd sizes: partial tiles, strips and chunks everywhere


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """A smooth RGB image with noise (compresses, and JPEG keeps it recognisable)."""
    rng = np.random.default_rng(11)
    y, x = np.mgrid[0:H, 0:W]
    base = np.stack([x * 255 // W, y * 255 // H, (x + y) * 255 // (H + W)], axis=2)
    return np.clip(base + rng.integers(-20, 20, (H, W, 3)), 0, 255).astype(np.uint8)


def level0(path, tmp_path, **options) -> np.ndarray:
    """Convert ``path`` (chunk 64) and return level 0 as (h, w, 3)."""
    out = convert_slide(path, tmp_path / f"{path.stem}.zarr", chunk=64, **options)
    return SlideStore(out).levels[0][:].transpose(1, 2, 0)


STORAGE = [
    pytest.param({"tile": (64, 64), "compression": "jpeg"}, id="tiled-jpeg"),
    pytest.param({"tile": (32, 48), "compression": "lzw"}, id="tiled-lzw"),
    pytest.param({"tile": (64, 64), "compression": "zlib", "predictor": True}, id="tiled-deflate-predictor"),
    pytest.param({"tile": (64, 64), "compression": "zstd"}, id="tiled-zstd"),
    pytest.param({"tile": (64, 64)}, id="tiled-none"),
    pytest.param({"rowsperstrip": 7, "compression": "jpeg"}, id="stripped-jpeg"),
    pytest.param({"rowsperstrip": 16, "compression": "lzw"}, id="stripped-lzw"),
    pytest.param({"rowsperstrip": 5, "compression": "zlib"}, id="stripped-deflate"),
    pytest.param({"rowsperstrip": H, "compression": "zstd"}, id="single-strip-zstd"),
    pytest.param({"rowsperstrip": H}, id="single-strip-none"),
    pytest.param({"tile": (64, 64), "compression": "zlib", "bigtiff": True}, id="bigtiff"),
]


@pytest.mark.parametrize("storage", STORAGE)
def test_storage_variants_equal_tifffile_decoding(rgb, tmp_path, storage):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", **storage)
    np.testing.assert_array_equal(level0(path, tmp_path), tifffile.imread(path))


def test_subifd_pyramid_ome_tiff_uses_full_resolution(rgb, tmp_path):
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(rgb, subifds=2, tile=(64, 64), compression="zlib", photometric="rgb", metadata={"axes": "YXS"})
        tif.write(rgb[::2, ::2], tile=(64, 64), compression="zlib", photometric="rgb", subfiletype=1)
        tif.write(rgb[::4, ::4], tile=(64, 64), compression="zlib", photometric="rgb", subfiletype=1)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and len(tif.series[0].levels) == 3
    np.testing.assert_array_equal(level0(path, tmp_path), rgb)


def test_svs_like_multi_series_reads_baseline(rgb, tmp_path):
    path = tmp_path / "slide.svs"
    description = f"Aperio Image Library v12.0.15\r\n{W}x{H} [0,0 {W}x{H}] (64x64) JPEG/RGB Q=70|AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(64, 64), compression="zlib", photometric="rgb", description=description)
        tif.write(rgb[::8, ::8], photometric="rgb", description="Aperio thumbnail 29x19")  # thumbnail series
        tif.write(rgb[::4, ::4], tile=(64, 64), compression="zlib", photometric="rgb", description="Aperio level")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs and len(tif.series) >= 2
    np.testing.assert_array_equal(level0(path, tmp_path), rgb)


def test_layouts_planar_hubmap_gray_rgba(rgb, tmp_path):
    planar = np.moveaxis(rgb, 2, 0)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate", tile=(32, 32))
    tifffile.imwrite(tmp_path / "hubmap.tif", planar[None, None], photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "gray.tif", rgb[:, :, 1], tile=(64, 64), compression="zlib")
    rgba = np.concatenate([rgb, np.full((H, W, 1), 7, np.uint8)], axis=2)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"], compression="zlib")
    for name in ("planar", "hubmap", "rgba"):
        np.testing.assert_array_equal(level0(tmp_path / f"{name}.tif", tmp_path), rgb, err_msg=name)
    np.testing.assert_array_equal(level0(tmp_path / "gray.tif", tmp_path), np.repeat(rgb[:, :, 1:2], 3, axis=2))


def test_uint16_scale_and_percentile_stretch(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.integers(1000, 3000, (H, W, 3)).astype(np.uint16)
    data[0, 0] = 60000  # one hot pixel: a percentile stretch ignores it
    path = tmp_path / "u16.tif"
    tifffile.imwrite(path, data, photometric="rgb", tile=(64, 64))
    np.testing.assert_array_equal(level0(path, tmp_path), (data // 257).astype(np.uint8))
    stretched = level0(path, tmp_path, uint16="percentile", percentiles=(1, 99))
    low, high = np.percentile(data, [1, 99])
    assert abs(int(stretched[1:].min()) - 0) <= 1 and stretched[1:].max() == 255  # low/high ends reach 0/255
    assert stretched[0, 0, 0] == 255  # clipped, not wrapped
    expected = np.clip((data[5, 5].astype(float) - low) * 255 / (high - low), 0, 255)
    np.testing.assert_allclose(stretched[5, 5], expected, atol=3)  # percentiles come from a sample


def test_percentile_sample_is_the_smallest_pyramid_level(tmp_path):
    data = np.random.default_rng(2).integers(0, 4000, (512, 512), dtype=np.uint16)
    path = tmp_path / "pyr16.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(data, subifds=1, tile=(128, 128))
        tif.write(data[::4, ::4], tile=(128, 128), subfiletype=1)
    sample = SourceSlide(path, uint16="percentile").reader.sample()
    assert sample.shape[:2] == (128, 128)


def test_more_than_three_channels_need_a_selection(rgb, tmp_path):
    five = np.concatenate([rgb, rgb[:, :, :2] // 2], axis=2)
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, np.moveaxis(five, 2, 0), photometric="minisblack", metadata={"axes": "CYX"})
    with pytest.raises(SlideError, match=r"five.tif: 5 channels.*channels: \[i, j, k\]"):
        convert_slide(path, tmp_path / "x.zarr")
    picked = level0(path, tmp_path, channels=[2, 1, 0])
    np.testing.assert_array_equal(picked, rgb[:, :, ::-1])
    with pytest.raises(SlideError, match=r"channels \[0, 1, 7\] must be three indices below the image's 5"):
        convert_slide(path, tmp_path / "x.zarr", channels=[0, 1, 7])


def test_float_pixels_need_the_percentile_rule(tmp_path):
    path = tmp_path / "f.tif"
    data = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    tifffile.imwrite(path, data)
    with pytest.raises(SlideError, match="f.tif: pixel type float32 has no fixed scale"):
        convert_slide(path, tmp_path / "x.zarr")
    out = level0(path, tmp_path, uint16="percentile", percentiles=(0, 100))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_huge_strips_are_streamed_row_by_row(rgb, tmp_path, monkeypatch):
    """A whole slide in one strip (deflate or none) is decoded piecewise, never whole."""
    monkeypatch.setattr(limits, "STREAM_SEGMENT_BYTES", 4096)
    cases = {
        "deflate": dict(compression="zlib", predictor=True),
        "none": {},
        "planar": dict(compression="zlib", planarconfig="separate"),
    }
    for name, options in cases.items():
        path = tmp_path / f"{name}.tif"
        data = np.moveaxis(rgb, 2, 0) if name == "planar" else rgb
        tifffile.imwrite(path, data, photometric="rgb", rowsperstrip=H, **options)
        with SourceSlide(path) as source:
            assert isinstance(source.reader, StripStreamReader), name
            np.testing.assert_array_equal(source.read(40, 90, 10, 200), rgb[40:90, 10:200])
        np.testing.assert_array_equal(level0(path, tmp_path), rgb, err_msg=name)


def test_huge_strip_that_cannot_be_streamed_is_rejected_up_front(rgb, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_SEGMENT_BYTES", 4096)
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=H, compression="lzw")
    with pytest.raises(
        SlideError, match=r"lzw.tif: strips of 0 MiB decoded each; LZW strips cannot be decoded piecewise"
    ):
        SourceSlide(path)


def test_png_and_jpeg_without_pil_decompression_bomb_limit(rgb, tmp_path, monkeypatch):
    import imagecodecs

    PIL = pytest.importorskip("PIL.Image")
    monkeypatch.setattr(PIL, "MAX_IMAGE_PIXELS", 100)  # PIL would refuse anything larger
    (tmp_path / "a.png").write_bytes(imagecodecs.png_encode(rgb))
    (tmp_path / "g16.png").write_bytes(imagecodecs.png_encode(rgb[:, :, 0].astype(np.uint16) * 257))
    (tmp_path / "a.jpg").write_bytes(imagecodecs.jpeg8_encode(rgb, level=95))
    np.testing.assert_array_equal(level0(tmp_path / "a.png", tmp_path), rgb)
    np.testing.assert_array_equal(level0(tmp_path / "g16.png", tmp_path)[:, :, 0], rgb[:, :, 0])
    jpeg = level0(tmp_path / "a.jpg", tmp_path)
    np.testing.assert_array_equal(jpeg, imagecodecs.imread(tmp_path / "a.jpg"))
    assert np.abs(jpeg.astype(int) - rgb).mean() < 12  # the same picture, JPEG-compressed
