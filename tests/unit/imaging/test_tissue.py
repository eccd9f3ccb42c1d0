"""Tissue detection: methods per image type, ``auto``, and predict's fallback when it finds no tissue."""

import logging

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from support.paths import ROOT

from wsiseg.convert import convert_slide
from wsiseg.imaging.tissue import METHODS, TissueMap, choose_method, tissue_mask
from wsiseg.predict import PredictParams, predict_slide
from wsiseg.report import make_report
from wsiseg.store.slide import SlideStore

BLOBS = [(60, 70, 28), (190, 300, 45), (300, 110, 35), (110, 420, 38), (300, 420, 25)]  # (y, x, radius)


def _blobs(h: int = 384, w: int = 512) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    for y, x, r in BLOBS:
        cv2.circle(mask, (x, y), r, 1, -1)
    return mask > 0


def _fluorescence(rng: np.random.Generator, h: int = 384, w: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale bright-on-dark image (background 10-20, blobs ~200) as RGB, and its blobs."""
    blobs = _blobs(h, w)
    gray = rng.integers(10, 21, (h, w)).astype(np.uint8)
    gray[blobs] = rng.integers(185, 216, int(blobs.sum()))
    return np.repeat(gray[:, :, None], 3, axis=2), blobs


def _he(rng: np.random.Generator, h: int = 384, w: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """H&E-like image: pink tissue with purple nuclei on white glass, and its tissue."""
    blobs = _blobs(h, w)
    image = np.clip(rng.normal(242, 3, (h, w, 3)), 0, 255).astype(np.uint8)
    image[blobs] = np.clip(rng.normal((225, 150, 195), 8, (int(blobs.sum()), 3)), 0, 255).astype(np.uint8)
    nuclei = blobs & (rng.random((h, w)) < 0.05)
    image[nuclei] = (95, 52, 135)
    return image, blobs


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_auto_picks_a_method_that_suits_each_kind_of_image():
    rng = np.random.default_rng(0)
    he, he_tissue = _he(rng)
    fluo, fluo_tissue = _fluorescence(rng)
    gray_bf = np.where(he_tissue[:, :, None], np.uint8(140), np.uint8(238)).repeat(
        3, axis=2
    )  # unstained, grey on white
    glass = np.clip(rng.normal(240, 3, (384, 512, 3)), 0, 255).astype(np.uint8)
    assert choose_method(he) == "saturation"
    assert choose_method(fluo) == "fluorescence"
    assert choose_method(gray_bf) == "otsu_gray"
    assert choose_method(glass) == "otsu_gray"  # light and colourless
    assert _iou(tissue_mask(he, method="auto"), he_tissue) > 0.9
    assert _iou(tissue_mask(fluo, method="auto"), fluo_tissue) > 0.9
    assert _iou(tissue_mask(gray_bf, method="auto"), he_tissue) > 0.9
    for method in METHODS:  # all glass is no tissue, whatever the method
        assert tissue_mask(glass, method=method).mean() < 0.01, method


def test_saturation_methods_miss_grayscale_fluorescence_and_fluorescence_finds_it():
    """The issue's failure: stain-colour methods see nothing on a grayscale bright-on-dark image."""
    fluo, blobs = _fluorescence(np.random.default_rng(1))
    assert not tissue_mask(fluo, method="saturation").any() and not tissue_mask(fluo, method="otsu").any()
    assert _iou(tissue_mask(fluo, method="otsu_gray"), blobs) < 0.05  # finds the background instead
    assert _iou(tissue_mask(fluo, method="fluorescence"), blobs) > 0.9


def test_fluorescence_on_an_empty_dark_field_finds_no_tissue():
    """Noise over a camera offset is not split in two by Otsu: the floor sits above the darkest background."""
    rng = np.random.default_rng(2)
    for offset in (0, 12, 40):
        field = np.repeat(rng.integers(offset, offset + 12, (256, 256)).astype(np.uint8)[:, :, None], 3, axis=2)
        assert choose_method(field) == "fluorescence"
        assert tissue_mask(field, method="fluorescence").mean() < 0.01, offset


def test_unknown_method_is_an_error():
    with pytest.raises(ValueError, match="unknown tissue method 'dapi'"):
        tissue_mask(np.zeros((8, 8, 3), np.uint8), method="dapi")


@pytest.fixture(scope="module")
def fluorescence_slide(tmp_path_factory):
    """A converted grayscale fluorescence slide (384x512, bright blobs on dark) with the blobs as its mask."""
    work = tmp_path_factory.mktemp("fluo")
    rgb, blobs = _fluorescence(np.random.default_rng(3))
    tifffile.imwrite(work / "fluo.tif", rgb[:, :, 0], tile=(128, 128), photometric="minisblack")
    tifffile.imwrite(work / "fluo_mask.tif", blobs.astype(np.uint8))
    slide = convert_slide(
        work / "fluo.tif", work / "fluo.zarr", mask=work / "fluo_mask.tif", slide_id="fluo", chunk=128, mpp=0.5
    )  # the demo model's scanner
    return slide, blobs


def test_auto_tissue_map_of_a_fluorescence_slide_covers_the_blobs(fluorescence_slide):
    slide, blobs = fluorescence_slide
    store = SlideStore(slide)
    tissue = TissueMap(store, method="auto", max_side=128)  # a low-resolution level, not level 0
    assert tissue.method == "fluorescence" and tissue.requested == "auto" and tissue.factor > 1
    h, w = tissue.mask.shape
    low = cv2.resize(blobs.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA) > 0
    assert _iou(tissue.mask, low) > 0.8


def test_tissue_fraction_is_the_share_of_tissue_in_the_box_counting_outside_as_background(fluorescence_slide):
    """Tiles are kept by this share (predict.min_tissue): every box, also one reaching past the slide's edge."""
    tissue = TissueMap(SlideStore(fluorescence_slide[0]), method="auto", max_side=128)
    tissue.mask = np.random.default_rng(1).random(tissue.mask.shape) > 0.6  # an irregular mask: every box differs
    tissue._sums = None
    f, (h, w) = tissue.factor, tissue.mask.shape
    rng = np.random.default_rng(2)
    for _ in range(300):
        y0, x0 = (int(v) for v in rng.integers(-2 * f, (h + 2) * f, 2))
        height, width = (int(v) for v in rng.integers(1, 40 * f, 2))
        ys, xs = max(0, y0 // f), max(0, x0 // f)
        ye, xe = max(ys + 1, -(-(y0 + height) // f)), max(xs + 1, -(-(x0 + width) // f))
        expected = tissue.mask[ys:ye, xs:xe].sum() / (
            (ye - ys) * (xe - xs)
        )  # cells past the edge count in the area, as 0
        assert tissue.fraction(y0, x0, height, width) == pytest.approx(expected, abs=1e-12), (y0, x0, height, width)
    assert tissue.fraction(0, 0, h * f, w * f) == pytest.approx(tissue.mask.mean())
    assert tissue.fraction(h * f + 5, 0, 10, 10) == 0.0


def test_predict_falls_back_to_every_tile_with_a_warning(tiny_trained, fluorescence_slide, tmp_path, caplog):
    _, ckpt = tiny_trained
    slide, _ = fluorescence_slide
    params = PredictParams(tile=64, overlap=16, chunk=128, tissue_method="saturation")
    with caplog.at_level(logging.INFO, logger="wsiseg"):
        out = predict_slide(slide, ckpt, tmp_path / "p.zarr", params)
    attrs = zarr.open_group(out, mode="r").attrs
    total = attrs["tissue"]["tiles_total"]
    assert total == attrs["tiles_total"] > 0
    assert attrs["tissue"] == {
        "method": "saturation",
        "requested": "saturation",
        "share": 0.0,
        "tiles_skipped": 0,
        "tiles_total": total,
        "fallback": True,
    }
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "predicting every tile" in r.getMessage()]
    assert len(warnings) == 1 and "saturation" in warnings[0].getMessage()
    # the prediction store says how tiles were chosen, and the report warns and carries it into metrics.csv
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsiseg"):
        make_report({"fluo": out}, {"fluo": slide}, {"fluo": "val"}, tmp_path / "sub.csv", tmp_path / "m.csv")
    assert any("every tile was predicted" in r.getMessage() for r in caplog.records)
    row = pd.read_csv(tmp_path / "m.csv").set_index("slide_id").loc["fluo"]
    assert row["tissue_method"] == "saturation" and bool(row["tissue_fallback"])
    assert row["tiles_skipped"] == 0 and row["tiles_total"] == total


def test_predict_without_fallback_empties_the_slide(tiny_trained, fluorescence_slide, tmp_path, caplog):
    """The silent failure the fallback prevents: with it off, saturation skips every tile (and the report says so)."""
    _, ckpt = tiny_trained
    slide, _ = fluorescence_slide
    params = PredictParams(tile=64, overlap=16, chunk=128, tissue_method="saturation", tissue_fallback=0)
    out = predict_slide(slide, ckpt, tmp_path / "p.zarr", params)
    root = zarr.open_group(out, mode="r")
    assert root.attrs["tiles_skipped"] == root.attrs["tiles_total"] and not root.attrs["tissue"]["fallback"]
    assert not root["0"][:].any()
    with caplog.at_level(logging.WARNING, logger="wsiseg"):
        make_report({"fluo": out}, {"fluo": slide}, {"fluo": "val"}, tmp_path / "sub.csv", tmp_path / "m.csv")
    assert any(
        "was skipped as non-tissue" in r.getMessage() and "prediction is empty" in r.getMessage()
        for r in caplog.records
    )


def test_predict_auto_detects_fluorescence_and_skips_only_background(
    tiny_trained, fluorescence_slide, tmp_path, caplog
):
    _, ckpt = tiny_trained
    slide, blobs = fluorescence_slide
    with caplog.at_level(logging.INFO, logger="wsiseg"):
        out = predict_slide(
            slide, ckpt, tmp_path / "p.zarr", PredictParams(tile=64, overlap=16, chunk=128, min_tissue=0.05)
        )
    tissue = zarr.open_group(out, mode="r").attrs["tissue"]
    assert tissue["method"] == "fluorescence" and tissue["requested"] == "auto" and not tissue["fallback"]
    assert 0 < tissue["tiles_skipped"] < tissue["tiles_total"]
    assert tissue["share"] == pytest.approx(blobs.mean(), abs=0.02)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)
    assert any("tissue method fluorescence (auto)" in r.getMessage() for r in caplog.records)


def test_predict_auto_keeps_saturation_on_he_slides(tiny_trained, tmp_path):
    """H&E demo slides: ``auto`` is the saturation threshold, as before."""
    slides, ckpt = tiny_trained
    out = predict_slide(slides["demo_2"], ckpt, tmp_path / "p.zarr", PredictParams(tile=64, overlap=16, chunk=128))
    tissue = zarr.open_group(out, mode="r").attrs["tissue"]
    assert tissue["method"] == "saturation" and not tissue["fallback"]


def test_unknown_predict_tissue_method_fails_before_work(tiny_trained, tmp_path):
    slides, ckpt = tiny_trained
    with pytest.raises(ValueError, match="predict.tissue_method 'dapi'"):
        predict_slide(
            slides["demo_2"], ckpt, tmp_path / "p.zarr", PredictParams(tile=64, overlap=16, tissue_method="dapi")
        )
    assert not (tmp_path / "p.zarr").exists()


def test_config_schema_offers_the_tissue_methods_with_predict_defaults():

    import yaml

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())["properties"]
    predict = schema["predict"]["properties"]
    assert (
        set(predict["tissue_method"]["enum"])
        == set(schema["patches"]["properties"]["tissue_method"]["enum"])
        == set(METHODS)
    )
    for key in ("tissue_method", "tissue_fallback", "min_tissue", "tissue_saturation"):
        assert predict[key]["default"] == getattr(PredictParams(), key), key


def test_histogram_median_equals_numpy_median():
    """``auto`` decides on the slide's median grey value, taken from a histogram: it must be numpy's median exactly
    (odd and even pixel counts, narrow and full value ranges)."""
    from wsiseg.imaging.tissue import _median

    rng = np.random.default_rng(0)
    for shape in [(1, 1), (2, 1), (7, 3), (100, 101), (512, 512)]:
        for high in (1, 2, 97, 256):
            image = rng.integers(0, high, shape, dtype=np.uint8)
            assert _median(image) == np.median(image), (shape, high)
