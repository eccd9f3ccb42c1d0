import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr

from wsiseg import rle
from wsiseg.convert import convert_slide
from wsiseg.report import encode_store, make_report, scores


def _prediction(path, mask):
    root = zarr.open_group(path, mode="w", zarr_format=2)
    root.create_array("mask", data=mask.astype(np.uint8), chunks=(16, 16))
    root.create_array("prob", data=(mask * 255).astype(np.uint8), chunks=(16, 16))
    return path


def test_scores_hand_computed():
    s = scores(tp=30, fp=10, fn=20)
    assert s["dice"] == pytest.approx(60 / 90)
    assert s["iou"] == pytest.approx(30 / 60)
    assert s["precision"] == pytest.approx(0.75) and s["recall"] == pytest.approx(0.6)
    assert scores(0, 0, 0)["dice"] == 1.0  # empty prediction of an empty truth: Kaggle scores 1
    assert scores(0, 5, 0)["dice"] == 0.0


def test_chunkwise_rle_equals_in_memory_encoding(tmp_path):
    rng = np.random.default_rng(0)
    mask = (rng.random((50, 70)) < 0.4).astype(np.uint8)
    store = _prediction(tmp_path / "p.zarr", mask)
    for band in (1, 16, 33, 100):
        assert encode_store(store, band=band) == rle.encode(mask)


def test_report_metrics_submission_and_overlays(tmp_path):
    image = np.full((64, 80, 3), (230, 150, 200), np.uint8)
    truth = np.zeros((64, 80), np.uint8)
    truth[10:30, 10:30] = 1  # 400 px
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    slides = {s: convert_slide(tmp_path / "img.tif", tmp_path / f"{s}.zarr", mask=tmp_path / "truth.tif") for s in ("a", "b")}
    pred_a = np.zeros_like(truth)
    pred_a[20:40, 10:30] = 1  # overlaps half: tp 200, fp 200, fn 200
    preds = {"a": _prediction(tmp_path / "pa.zarr", pred_a), "b": _prediction(tmp_path / "pb.zarr", truth)}
    table = make_report(preds, slides, {"a": "test", "b": "val"}, tmp_path / "sub.csv", tmp_path / "m.csv", tmp_path / "ov")
    metrics = pd.read_csv(tmp_path / "m.csv").set_index("slide_id")
    assert metrics.loc["a", "dice"] == pytest.approx(0.5) and metrics.loc["a", "tp"] == 200
    assert metrics.loc["b", "dice"] == pytest.approx(1.0)
    assert metrics.loc["mean", "dice"] == pytest.approx(0.75)  # mean of per-slide Dice
    assert len(table) == 3
    sub = pd.read_csv(tmp_path / "sub.csv", keep_default_na=False)
    assert sub["id"].tolist() == ["a"]  # only test slides are submitted
    np.testing.assert_array_equal(rle.decode(sub.loc[0, "predicted"], truth.shape), pred_a)
    assert (tmp_path / "ov" / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
