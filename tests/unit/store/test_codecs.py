"""The compact store mode (``convert.compression: jpeg``): lossy JPEG image chunks, lossless labels,
read by every wsiseg stage and by ome-zarr-py once the codec is registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import tifffile
from support.paths import SHARED

from wsiseg.convert import convert_slide
from wsiseg.store.codecs import PlanarJpeg
from wsiseg.store.slide import SlideStore

GBM40 = SHARED / "data" / "gbm40" / "images"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def he_tiff(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 1024 x 1536 tiled JPEG (q90) TIFF of real H&E crops (gbm40), as slides are scanned, and its decode."""
    if not GBM40.is_dir():
        pytest.skip(f"real H&E crops not found at {GBM40}")
    crops = [tifffile.imread(f) for f in sorted(GBM40.glob("*.tif"))[:6]]
    image = np.concatenate([np.concatenate(crops[:3], 1), np.concatenate(crops[3:], 1)], 0)
    path = tmp_path_factory.mktemp("he") / "he.tif"
    tifffile.imwrite(path, image, tile=(256, 256), compression="jpeg", compressionargs={"level": 90}, photometric="rgb")
    return path, tifffile.imread(path)


def test_jpeg_store_is_compact_visually_lossless_and_keeps_labels_exact(he_tiff, tmp_path):
    path, source = he_tiff
    mask = np.zeros(source.shape[:2], np.uint8)
    mask[100:700, 200:900] = 1
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    lossless = convert_slide(path, tmp_path / "lz4.zarr", chunk=256)
    compact = convert_slide(
        path, tmp_path / "jpeg.zarr", mask=tmp_path / "mask.tif", chunk=256, compression="jpeg", jpeg_tile_copy=False
    )  # decoded and re-encoded (tile copy: test_tile_copy_of_real_he_is_exact_and_compact)
    store = SlideStore(compact)
    image = store.read_image(0, 0, (store.height, store.width))
    psnr = 10 * np.log10(255**2 / np.mean((image.astype(float) - source) ** 2))
    assert psnr > 40, psnr  # measured 52-54 dB at quality 90
    assert _size(compact / "0") < 0.25 * _size(lossless / "0")  # measured ~0.11
    assert _size(compact) < 2.0 * path.stat().st_size  # pyramid included; 1.3-1.5x on larger slides
    np.testing.assert_array_equal(store.mask_plane(0), mask)  # labels are never lossy
    half = store.read_image(0, 0, (store.height // 2, store.width // 2), 2.0)  # the pyramid reads too
    assert half.shape == (store.height // 2, store.width // 2, 3) and abs(float(half.mean()) - float(source.mean())) < 2


def test_tile_copy_of_real_he_is_exact_and_compact(he_tiff, tmp_path):
    path, source = he_tiff
    compact = convert_slide(path, tmp_path / "jpeg.zarr", chunk=256, compression="jpeg")  # tiles 256² = chunks: copied
    store = SlideStore(compact)
    assert store.root.attrs["wsiseg"]["level0"]["path"] == "tile-copy"
    np.testing.assert_array_equal(store.read_image(0, 0, (store.height, store.width)), source)
    with tifffile.TiffFile(path) as tif:
        chunks = sum(f.stat().st_size for f in (compact / "0").glob("0.*"))
        assert chunks == sum(tif.pages[0].databytecounts)  # the tiles as they are
    assert _size(compact) < 2.0 * path.stat().st_size


def test_codec_round_trips_through_its_config():
    y, x = np.mgrid[0:64, 0:48]
    planes = np.stack([(100 + 50 * np.sin(x / 7 + c) + 30 * np.cos(y / 5)).astype(np.uint8) for c in range(3)])
    codec = numcodecs.get_codec(json.loads(json.dumps(PlanarJpeg(95).get_config())))
    decoded = codec.decode(codec.encode(planes))
    assert decoded.shape == planes.shape and np.abs(decoded.astype(int) - planes).mean() < 3
    with pytest.raises(ValueError, match="uint8 \\(3, y, x\\)"):
        codec.encode(planes[:1])


def test_ome_zarr_py_reads_a_jpeg_store_after_importing_the_codec(he_tiff, tmp_path):
    pytest.importorskip("ome_zarr")
    path, source = he_tiff
    store = convert_slide(path, tmp_path / "jpeg.zarr", chunk=256, compression="jpeg")
    code = (
        "import sys, numpy as np, wsiseg.store.codecs; from ome_zarr import io, reader; "
        "node = next(iter(reader.Reader(io.parse_url(sys.argv[1]))())); "
        "print(tuple(np.asarray(node.data[0][:, :64, :64]).shape), int(np.asarray(node.data[0][:, :64, :64]).mean()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(store)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[:3] == ["(3,", "64,", "64)"] and abs(int(out[3]) - source[:64, :64].mean()) < 3
