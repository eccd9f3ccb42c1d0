"""Compact stores from tiled JPEG TIFFs by tile copy (``convert.compression: jpeg``, :mod:`wsiseg.store.tilecopy`):
level 0 is the TIFF's own JPEG tiles, bit-identical to tifffile's decode, whatever the colour-space
variant; slides that cannot be copied fall back to decode + re-encode, and the log and attributes say so."""

from __future__ import annotations

import logging
import struct

import cv2
import imagecodecs
import numpy as np
import pytest
import tifffile
import zarr

import wsiseg.store.tilecopy
from wsiseg.convert import convert_slide
from wsiseg.errors import SlideError
from wsiseg.store.pyramid import halve
from wsiseg.store.slide import SlideStore

TILE = 256
SHAPE = (600, 700)  # edge tiles on both sides


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    planes = [120 + 60 * np.sin(x / 9 + c) * np.cos(y / 13) + rng.normal(0, 8, x.shape) for c in range(3)]
    return np.stack(planes, -1).clip(0, 255).astype(np.uint8)


def _segments(stream: bytes) -> list[tuple[int, bytes]]:
    """The header segments of a JPEG stream (marker, bytes), then (0, the scan to the end)."""
    out, i = [], 2
    while True:
        marker, length = stream[i + 1], struct.unpack(">H", stream[i + 2 : i + 4])[0]
        out.append((marker, stream[i : i + 2 + length]))
        i += 2 + length
        if marker == 0xDA:
            return out + [(0, stream[i:])]


def _abbreviate(stream: bytes, aperio: bool) -> tuple[bytes, bytes]:
    """(abbreviated tile stream, tables-only stream); ``aperio``: also drop the Adobe marker and number the
    components 1, 2, 3 (an RGB JPEG that says nothing about its colour space, as in Aperio SVS)."""
    head, tables = [], []
    for marker, data in _segments(stream):
        if aperio and marker == 0xEE:
            continue
        if aperio and marker in (0xC0, 0xDA):  # component ids in SOF0 and SOS
            data = bytearray(data)
            for k in range(3):
                data[10 + 3 * k if marker == 0xC0 else 5 + 2 * k] = k + 1
            data = bytes(data)
        (tables if marker in (0xDB, 0xC4) else head).append(data)
    return b"\xff\xd8" + b"".join(head), b"\xff\xd8" + b"".join(tables) + b"\xff\xd9"


def _write(path, image: np.ndarray, variant: str, tile: int = TILE):
    """A tiled JPEG TIFF: ``ycbcr`` / ``rgb`` as tifffile writes them (complete tile streams), or
    ``ycbcr-tables`` / ``aperio`` (RGB, no colour-space marker) with shared JPEGTables."""
    if variant in ("ycbcr", "rgb"):
        args = {"outcolorspace": "rgb"} if variant == "rgb" else {}
        tifffile.imwrite(
            path, image, tile=(tile, tile), compression="jpeg", photometric="rgb", compressionargs={"level": 90, **args}
        )
        return
    h, w = image.shape[:2]
    rgb = variant == "aperio"
    streams, tables = [], None
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            piece = np.zeros((tile, tile, 3), np.uint8)
            piece[: min(tile, h - y), : min(tile, w - x)] = image[y : y + tile, x : x + tile]
            space = (
                {"colorspace": "rgb", "outcolorspace": "rgb"}
                if rgb
                else {"colorspace": "rgb", "outcolorspace": "ycbcr"}
            )
            stream, tables = _abbreviate(imagecodecs.jpeg8_encode(piece, level=90, **space), rgb)
            streams.append(stream)
    tifffile.imwrite(
        path,
        iter(streams),
        shape=image.shape,
        dtype=np.uint8,
        tile=(tile, tile),
        compression="jpeg",
        photometric="rgb",
        compressionargs={"outcolorspace": "rgb" if rgb else "ycbcr"},
        extratags=[(347, 7, len(tables), tables, True)],
    )


def _level(store, k: int) -> np.ndarray:
    return np.asarray(zarr.open_group(store, mode="r")[str(k)]).transpose(1, 2, 0)


@pytest.mark.parametrize("variant", ["ycbcr", "rgb", "ycbcr-tables", "aperio"])
def test_copied_tiles_are_level_0_exactly(variant, tmp_path, caplog):
    path = tmp_path / f"{variant}.tif"
    _write(path, _image(), variant)
    with tifffile.TiffFile(path) as tif:  # the variant is what it says
        page = tif.pages[0]
        assert (page.jpegtables is not None) == (variant in ("ycbcr-tables", "aperio"))
        assert page.photometric == (2 if variant in ("rgb", "aperio") else 6)
    source = tifffile.imread(path)
    with caplog.at_level(logging.INFO, logger="wsiseg"):
        store = convert_slide(path, tmp_path / "s.zarr", chunk=TILE, compression="jpeg")
    assert "JPEG tiles, copied" in caplog.text
    assert zarr.open_group(store, mode="r").attrs["wsiseg"]["level0"]["path"] == "tile-copy"
    np.testing.assert_array_equal(_level(store, 0), source)  # bit-identical to tifffile's decode
    chunk = (store / "0" / "0.0.0").read_bytes()
    assert chunk.startswith(b"\xff\xd8") and b"\xff\xc4" in chunk  # a complete stream: tables merged in
    slide = SlideStore(store)
    np.testing.assert_array_equal(slide.read_image(100, 200, (300, 400)), source[100:400, 200:600])
    # level 1: the DCT-scaled 1/2 decode (then JPEG q90), close to the exact 2x2 mean
    mean = cv2.resize(source[:, :, :], (SHAPE[1] // 2, SHAPE[0] // 2), interpolation=cv2.INTER_AREA).astype(float)
    psnr = 10 * np.log10(255**2 / np.mean((_level(store, 1).astype(float) - mean) ** 2))
    assert psnr > 30, psnr
    assert _level(store, 2).shape == (150, 175, 3)


def test_tiles_other_than_the_chunks_fall_back_to_decoding(tmp_path, caplog):
    path = tmp_path / "s.tif"
    _write(path, _image(), "ycbcr", tile=128)
    source = tifffile.imread(path)
    with caplog.at_level(logging.INFO, logger="wsiseg"):
        store = convert_slide(path, tmp_path / "s.zarr", chunk=TILE, compression="jpeg")
    assert "tiles are 128x128 px, the store's chunks 256x256" in caplog.text
    made = zarr.open_group(store, mode="r").attrs["wsiseg"]["level0"]
    assert made["path"] == "decode" and "convert.chunk" in made["why"]
    error = np.mean((SlideStore(store).read_image(0, 0, SHAPE).astype(float) - source) ** 2)
    assert 10 * np.log10(255**2 / error) > 40


def test_a_variant_that_would_decode_differently_falls_back(tmp_path, caplog, monkeypatch):
    """Without the Adobe marker an Aperio-style RGB tile reads as YCbCr: the check sees it and decodes instead."""
    path = tmp_path / "s.tif"
    _write(path, _image(), "aperio")
    monkeypatch.setattr(wsiseg.store.tilecopy, "ADOBE_RGB", b"")
    with caplog.at_level(logging.INFO, logger="wsiseg"):
        store = convert_slide(path, tmp_path / "s.zarr", chunk=TILE, compression="jpeg")
    assert "decodes differently as a stand-alone JPEG stream" in caplog.text
    assert zarr.open_group(store, mode="r").attrs["wsiseg"]["level0"]["path"] == "decode"
    error = np.mean((_level(store, 0).astype(float) - tifffile.imread(path)) ** 2)
    assert 10 * np.log10(255**2 / error) > 25  # right colours (~29 dB: 4:2:0 chroma of RGB noise; wrong colours ~10 dB)


def test_tile_copy_can_be_switched_off_and_lossless_stores_never_copy(tmp_path):
    path = tmp_path / "s.tif"
    _write(path, _image(), "ycbcr")
    off = convert_slide(path, tmp_path / "off.zarr", chunk=TILE, compression="jpeg", jpeg_tile_copy=False)
    assert zarr.open_group(off, mode="r").attrs["wsiseg"]["level0"] == {"path": "decode", "why": "tile copy off"}
    lossless = convert_slide(path, tmp_path / "lz4.zarr", chunk=TILE)
    assert zarr.open_group(lossless, mode="r").attrs["wsiseg"]["level0"]["path"] == "decode"
    np.testing.assert_array_equal(_level(lossless, 0), tifffile.imread(path))


def test_a_sparse_tiff_leaves_missing_tiles_at_the_fill_value(tmp_path):
    path = tmp_path / "s.tif"
    image = _image()
    _write(path, image, "ycbcr")
    with tifffile.TiffFile(path, mode="r+b") as tif:  # tile 1 missing: tifffile reads it as 0s
        page = tif.pages[0]
        for tag, values in (("TileByteCounts", page.databytecounts), ("TileOffsets", page.dataoffsets)):
            page.tags[tag].overwrite([0 if i == 1 else v for i, v in enumerate(values)])
    source = tifffile.imread(path)
    assert not source[:TILE, TILE : 2 * TILE].any()
    store = convert_slide(path, tmp_path / "s.zarr", chunk=TILE, compression="jpeg")
    assert zarr.open_group(store, mode="r").attrs["wsiseg"]["level0"]["path"] == "tile-copy"
    np.testing.assert_array_equal(_level(store, 0), source)
    assert not (store / "0" / "0.0.1").exists()
    half = TILE // 2  # level 1: the missing tile's quarter of the chunk is black too (up to JPEG ringing)
    assert _level(store, 1)[: half - 8, half + 8 : 2 * half - 8].max() < 16


@pytest.mark.parametrize("shape, levels", [((200, 240), 1), ((400, 500), 2)])
def test_small_slides_are_copied_with_their_few_levels(shape, levels, tmp_path):
    path = tmp_path / "s.tif"
    _write(path, _image()[: shape[0], : shape[1]], "aperio")
    store = convert_slide(path, tmp_path / "s.zarr", chunk=TILE, compression="jpeg")
    group = zarr.open_group(store, mode="r")
    assert (
        group.attrs["wsiseg"]["level0"]["path"] == "tile-copy"
        and len(group.attrs["multiscales"][0]["datasets"]) == levels
    )
    np.testing.assert_array_equal(_level(store, 0), tifffile.imread(path))
    if levels > 1:
        assert _level(store, 1).shape == (200, 250, 3)


def test_an_svs_style_slide_is_copied_and_a_dicom_one_falls_back(tmp_path, caplog):
    from support.wsi_formats import tissue_like, write_dicom, write_svs

    svs = write_svs(tmp_path / "scan.svs", tissue_like(700, 900))  # + thumbnail, reduced level, label
    store = convert_slide(svs, tmp_path / "svs.zarr", chunk=TILE, compression="jpeg")
    assert zarr.open_group(store, mode="r").attrs["wsiseg"]["level0"]["path"] == "tile-copy"
    np.testing.assert_array_equal(_level(store, 0), tifffile.imread(svs, series=0, level=0))
    pytest.importorskip("wsidicom")
    folder = write_dicom(svs, tmp_path / "dicom")
    with caplog.at_level(logging.INFO, logger="wsiseg"):
        dicom = convert_slide(folder, tmp_path / "dicom.zarr", chunk=TILE, compression="jpeg")
    assert "not a single-page tiled TIFF read by tifffile" in caplog.text
    assert zarr.open_group(dicom, mode="r").attrs["wsiseg"]["level0"]["path"] == "decode"


def test_damaged_tiles_are_read_as_tifffile_reads_them_or_named(tmp_path):
    """A truncated tile (tifffile decodes it padded; libjpeg refuses to scale it) still converts; garbage stops
    convert with the file named, before the store appears."""
    path = tmp_path / "s.tif"
    _write(path, _image(), "ycbcr")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[1], page.databytecounts[1]  # tile 1: not among the tiles checked up front
    data = bytearray(path.read_bytes())
    data[offset + count // 2 : offset + count] = b"\x00" * (count - count // 2)  # the second half of the scan lost
    path.write_bytes(bytes(data))
    store = convert_slide(path, tmp_path / "s.zarr", chunk=TILE, compression="jpeg")
    np.testing.assert_array_equal(_level(store, 0), tifffile.imread(path))
    data[offset + 2 : offset + count] = b"\x00" * (count - 2)  # no JPEG markers at all
    path.write_bytes(bytes(data))
    with pytest.raises(SlideError, match=r"s\.tif: cannot decode JPEG tile 1"):
        convert_slide(path, tmp_path / "t.zarr", chunk=TILE, compression="jpeg")
    assert not (tmp_path / "t.zarr").exists()


def test_every_level_of_a_many_block_copy_is_as_close_to_the_slide_as_the_decoding_path(tmp_path):
    """Tiles of 64 px: blocks of 512 px, so a 600x700 slide has 2x2 blocks with edge pieces of odd size at
    every level.  Each level (2 pooled in the writer jobs, 3 per block, 4.. band by band from level 3 in
    memory) is at least as close to the exact 2^k mean of the slide as the store that decodes and
    re-encodes every tile (a misplaced chunk: ~10 dB)."""
    path = tmp_path / "small-tiles.tif"
    _write(path, _image(), "ycbcr", tile=64)
    copied = convert_slide(path, tmp_path / "copied.zarr", chunk=64, compression="jpeg")
    decoded = convert_slide(path, tmp_path / "decoded.zarr", chunk=64, compression="jpeg", jpeg_tile_copy=False)
    exact = tifffile.imread(path)
    np.testing.assert_array_equal(_level(copied, 0), exact)
    levels = len(zarr.open_group(copied, mode="r").attrs["multiscales"][0]["datasets"])
    assert levels == len(zarr.open_group(decoded, mode="r").attrs["multiscales"][0]["datasets"]) >= 5
    psnr = lambda a, b: 10 * np.log10(255**2 / np.mean((a.astype(float) - b) ** 2))  # noqa: E731
    for k in range(1, levels):
        exact = halve(exact, "mean")
        ours, theirs = _level(copied, k), _level(decoded, k)
        assert ours.shape == theirs.shape == exact.shape, k
        assert psnr(ours, exact) > psnr(theirs, exact) - 0.5, (k, psnr(ours, exact), psnr(theirs, exact))
        assert psnr(ours, theirs) > 35, k


def test_half_scale_decoders_agree_and_fall_back(tmp_path, monkeypatch):
    """simplejpeg's DCT-scaled decode equals OpenCV's (the fallback for subsamplings TurboJPEG cannot name),
    and a tile both refuse at 1/2 gets the 2x2 mean of its full decode."""
    path = tmp_path / "s.tif"
    _write(path, _image(), "ycbcr")
    with tifffile.TiffFile(path) as tif:
        plan = wsiseg.store.tilecopy.TileCopy(tif.pages[0], path, b"\xff\xd8")
        stream = plan.stream(plan.read([0])[0])
        fast = wsiseg.store.tilecopy._half(plan, 0, stream)
        assert fast.shape == (TILE // 2, TILE // 2, 3)

        def refuse(*args, **kwargs):
            raise ValueError("tjDecompressHeader3(): Could not determine subsampling level of JPEG image")

        monkeypatch.setattr(wsiseg.store.tilecopy.simplejpeg, "decode_jpeg", refuse)
        np.testing.assert_array_equal(wsiseg.store.tilecopy._half(plan, 0, stream), fast)
        monkeypatch.setattr(wsiseg.store.tilecopy.cv2, "imdecode", lambda *args: None)
        mean = wsiseg.store.tilecopy._half(plan, 0, stream)
        assert mean.shape == fast.shape and np.abs(mean.astype(int) - fast).mean() < 4
