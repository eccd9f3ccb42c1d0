import json

import numpy as np
import pandas as pd
import pytest
import shapely.geometry
import tifffile
import zarr
from support.stores import write_prediction

from wsiseg import rle
from wsiseg.convert import convert_slide
from wsiseg.errors import StoreError
from wsiseg.report import (
    confusion_matrix,
    encode_store,
    export_geojson,
    make_report,
    match_objects,
    scores,
    slide_metrics,
    submission_table,
)


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
    store = write_prediction(tmp_path / "p.zarr", mask)
    for band in (1, 16, 33, 100):
        assert encode_store(store, band=band) == rle.encode(mask)


def test_report_metrics_submission_and_overlays(tmp_path):
    image = np.full((64, 80, 3), (230, 150, 200), np.uint8)
    truth = np.zeros((64, 80), np.uint8)
    truth[10:30, 10:30] = 1  # 400 px
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    slides = {
        s: convert_slide(tmp_path / "img.tif", tmp_path / f"{s}.zarr", mask=tmp_path / "truth.tif") for s in ("a", "b")
    }
    pred_a = np.zeros_like(truth)
    pred_a[20:40, 10:30] = 1  # overlaps half: tp 200, fp 200, fn 200
    preds = {"a": write_prediction(tmp_path / "pa.zarr", pred_a), "b": write_prediction(tmp_path / "pb.zarr", truth)}
    table = make_report(
        preds, slides, {"a": "test", "b": "val"}, tmp_path / "sub.csv", tmp_path / "m.csv", tmp_path / "ov"
    )
    metrics = pd.read_csv(tmp_path / "m.csv").set_index("slide_id")
    assert metrics.loc["b", "object_f1"] == 1.0 and metrics.loc["a", "objects_matched"] == 0
    assert metrics.loc["a", "dice"] == pytest.approx(0.5) and metrics.loc["a", "tp"] == 200
    assert metrics.loc["b", "dice"] == pytest.approx(1.0)
    assert metrics.loc["mean", "dice"] == pytest.approx(0.75)  # mean of per-slide Dice
    assert len(table) == 3
    sub = pd.read_csv(tmp_path / "sub.csv", keep_default_na=False)
    assert sub["id"].tolist() == ["a"]  # only test slides are submitted
    np.testing.assert_array_equal(rle.decode(sub.loc[0, "predicted"], truth.shape), pred_a)
    assert (tmp_path / "ov" / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_object_matching_counts_pairs_above_iou():
    truth = np.zeros((40, 40), np.uint8)
    truth[2:10, 2:10] = 1  # matched exactly
    truth[20:30, 20:30] = 1  # prediction covers a quarter only: IoU 0.25, no match
    truth[2:6, 30:34] = 1  # missed
    pred = np.zeros_like(truth)
    pred[2:10, 2:10] = 1
    pred[20:25, 20:25] = 1
    pred[35:38, 2:5] = 1  # false positive
    assert match_objects(pred, truth, 0.5) == (3, 3, 1)  # F1 = 2*1 / (3+3)


def test_geojson_export_traces_objects_with_holes(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[10:40, 10:40] = 1
    mask[20:30, 20:30] = 0  # hole
    mask[50:55, 50:60] = 1
    assert export_geojson(write_prediction(tmp_path / "p.zarr", mask), tmp_path / "p.geojson", "glomerulus") == 2
    data = json.loads((tmp_path / "p.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    shapes = sorted((shapely.geometry.shape(f["geometry"]) for f in data["features"]), key=lambda g: -g.area)
    assert len(shapes[0].interiors) == 1 and shapes[0].is_valid
    assert shapes[0].area == 30 * 30 - 10 * 10  # outlines run on pixel edges: area = pixel count
    assert data["features"][0]["properties"]["classification"]["name"] == "glomerulus"


def test_sample_submission_fixes_order_and_rejects_unknown_ids(tmp_path):
    masks = {
        s: write_prediction(tmp_path / f"{s}.zarr", np.eye(8, dtype=np.uint8) * (i + 1) // (i + 1))
        for i, s in enumerate("abc")
    }
    pd.DataFrame({"id": ["c", "a"], "predicted": ["", ""]}).to_csv(tmp_path / "sample.csv", index=False)
    table = submission_table(masks, ["a", "b", "c"], tmp_path / "sample.csv")
    assert table["id"].tolist() == ["c", "a"] and table["predicted"].tolist() == [rle.encode(np.eye(8))] * 2
    pd.DataFrame({"id": ["zzz"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: no prediction for id\(s\) \['zzz'\]"):
        submission_table(masks, ["a"], tmp_path / "bad.csv")


def test_multiclass_metrics_per_class(tmp_path):
    image = np.full((32, 32, 3), (230, 150, 200), np.uint8)
    truth = np.zeros((32, 32), np.uint8)
    truth[:16] = 1
    truth[16:] = 2
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)[truth]  # colour-coded classes
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "truth.tif", colours, photometric="rgb")
    palette = {"#ff0000": 1, "#00ff00": 2}
    slide = convert_slide(tmp_path / "img.tif", tmp_path / "s.zarr", mask=tmp_path / "truth.tif", palette=palette)
    pred = truth.copy()
    pred[:8] = 2  # half of class 1 predicted as class 2
    store = write_prediction(tmp_path / "p.zarr", pred)
    zarr.open_group(store, mode="r+").attrs["classes"] = 3
    m = confusion_matrix(store, slide)
    assert m.tolist() == [[0, 0, 0], [0, 256, 256], [0, 0, 512]]
    row = slide_metrics(store, slide)
    assert row["dice"] == 1.0  # foreground is perfect
    assert row["dice_class1"] == pytest.approx(2 * 256 / (2 * 256 + 256))
    assert row["dice_class2"] == pytest.approx(2 * 512 / (2 * 512 + 256))
    named = slide_metrics(store, slide, class_names=["background", "tumour", "stroma"])
    assert named["dice_tumour"] == row["dice_class1"] and named["dice_stroma"] == row["dice_class2"]
    assert export_geojson(store, tmp_path / "p.geojson", class_names=["background", "tumour", "stroma"]) == 3
    features = json.loads((tmp_path / "p.geojson").read_text())["features"]  # class 2 is split in two by class 1
    assert sorted(f["properties"]["classification"]["name"] for f in features) == ["stroma", "stroma", "tumour"]
    assert {f["properties"]["measurements"]["Mean probability"] for f in features} == {
        1.0
    }  # each its own class's channel


def test_group_means_give_per_organ_scores(tmp_path):
    """HPA-style: metrics.csv has a mean row per group (organ) besides the overall mean."""
    image = np.full((32, 32, 3), (230, 150, 200), np.uint8)
    truth = np.zeros((32, 32), np.uint8)
    truth[8:24, 8:24] = 1
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    ids = ["k1", "k2", "l1"]
    slides = {s: convert_slide(tmp_path / "img.tif", tmp_path / f"{s}.zarr", mask=tmp_path / "truth.tif") for s in ids}
    preds = {s: write_prediction(tmp_path / f"p{s}.zarr", truth if s != "k2" else np.zeros_like(truth)) for s in ids}
    make_report(
        preds,
        slides,
        dict.fromkeys(ids, "val"),
        tmp_path / "sub.csv",
        tmp_path / "m.csv",
        groups={"k1": "kidney", "k2": "kidney", "l1": "lung"},
    )
    metrics = pd.read_csv(tmp_path / "m.csv").set_index("slide_id")
    assert metrics.loc["k2", "group"] == "kidney"
    assert metrics.loc["mean:kidney", "dice"] == pytest.approx(0.5) and metrics.loc["mean:lung", "dice"] == 1.0
    assert metrics.loc["mean", "dice"] == pytest.approx(2 / 3) and metrics.loc["mean", "tp"] == 2 * 256


def two_slides(tmp_path, chunk=512):
    """Slides ``a`` (prediction overlapping its 20 x 20 truth square by half, shifted 10 rows) and ``b``
    (prediction = truth), with an mpp of 0.5 recorded in the predictions."""
    image = np.full((64, 80, 3), (230, 150, 200), np.uint8)
    truth = np.zeros((64, 80), np.uint8)
    truth[10:30, 10:30] = 1  # 400 px
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    slides = {
        s: convert_slide(tmp_path / "img.tif", tmp_path / f"{s}.zarr", mask=tmp_path / "truth.tif", chunk=chunk)
        for s in ("a", "b")
    }
    shifted = np.zeros_like(truth)
    shifted[20:40, 10:30] = 1
    preds = {"a": write_prediction(tmp_path / "pa.zarr", shifted), "b": write_prediction(tmp_path / "pb.zarr", truth)}
    for store in preds.values():
        zarr.open_group(store, mode="r+").attrs["mpp"] = 0.5
    return slides, preds


def test_object_metrics_in_metrics_csv_and_scores_page(tmp_path):
    slides, preds = two_slides(tmp_path)
    make_report(
        preds,
        slides,
        {"a": "val", "b": "val"},
        tmp_path / "sub.csv",
        tmp_path / "m.csv",
        scores_html=tmp_path / "scores.html",
    )
    metrics = pd.read_csv(tmp_path / "m.csv").set_index("slide_id")
    # slide a: one object each, 200 px in common of 400 + 400: IoU 1/3, Dice 1/2
    a = metrics.loc["a"]
    assert a["glas_f1"] == 0.0  # the prediction covers exactly half of the gland, not more
    assert a["object_dice"] == pytest.approx(0.5)
    assert a["object_hausdorff"] == pytest.approx(10.0)  # rows 10-19 of the truth are 10 rows from the prediction
    assert a["object_hausdorff_um"] == pytest.approx(5.0)  # x 0.5 um/px
    assert a["aji"] == pytest.approx(200 / 600) and a["sq"] == 0.0
    assert a["pq"] == 0.0 and a["dq"] == 0.0 == a["object_f1"]
    b = metrics.loc["b"]
    assert (b["glas_f1"], b["object_dice"], b["object_hausdorff"], b["aji"], b["pq"], b["dq"], b["sq"]) == (
        1,
        1,
        0,
        1,
        1,
        1,
        1,
    )
    mean = metrics.loc["mean"]
    assert mean["object_hausdorff"] == pytest.approx(5.0) and mean["aji"] == pytest.approx((1 / 3 + 1) / 2)
    assert mean["glas_f1"] == pytest.approx(0.5) and mean["pq"] == pytest.approx(0.5)
    html = (tmp_path / "scores.html").read_text()
    for header in ("GlaS F1", "object Dice", "object Hausdorff (px)", "object Hausdorff (µm)", "AJI", "PQ", "DQ", "SQ"):
        assert f"<th>{header}</th>" in html
    assert "<td>10.0</td>" in html and "<td>0.333</td>" in html  # slide a: Hausdorff px, AJI


def test_object_metrics_scale_the_hausdorff_distance_to_level_0(tmp_path):
    """On a coarser level (max_side), distances are scaled back to level-0 pixels."""
    from wsiseg.report import object_scores

    slides, preds = two_slides(tmp_path, chunk=16)  # a mask pyramid in the slide stores too
    full = object_scores(preds["a"], slides["a"])
    half = object_scores(preds["a"], slides["a"], max_side=40)  # level 1: 32 x 40, squares shifted by 5 rows
    assert full["object_hausdorff"] == pytest.approx(10.0)
    assert half["object_hausdorff"] == pytest.approx(10.0)  # 5 level-1 px x 2


def test_missing_prediction_store_is_an_error_before_any_work(tmp_path):
    slides, preds = two_slides(tmp_path)
    out = tmp_path / "out"
    splits = {"a": "val", "b": "test"}
    gone = tmp_path / "gone.zarr"
    with pytest.raises(StoreError, match=f"slide b: prediction store {gone} does not exist"):
        make_report({**preds, "b": gone}, slides, splits, out / "sub.csv", out / "m.csv", out / "ov")
    with pytest.raises(StoreError, match="slide b: no prediction store given"):
        make_report({"a": preds["a"]}, slides, splits, out / "sub.csv", out / "m.csv", out / "ov")
    assert not out.exists()  # nothing was written for slide a either
