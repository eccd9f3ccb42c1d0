"""What a person reads: overlays with contrasting outlines, legend and Dice; the scores table; integer epochs."""

import json
import math

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from support.stores import write_prediction

from wsiseg.convert import convert_slide
from wsiseg.imaging.views import PREDICTION_COLOUR, TRUTH_COLOUR, draw_overlay, overlay_title, scores_html
from wsiseg.report import make_report


@pytest.fixture
def figures(monkeypatch) -> list:
    """Figures closed by the code under test (kept for inspection)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    closed, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: closed.append(fig) or close(fig))
    return closed


def rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])


def share_near(png: np.ndarray, colour: np.ndarray, tol: int = 40) -> float:
    return float((np.abs(png.astype(int) - colour).max(axis=2) < tol).mean())


def test_overlay_outlines_contrast_on_red_tissue_with_legend_and_dice(tmp_path, figures):
    image = np.full((200, 300, 3), (200, 40, 40), np.uint8)  # red tissue: a red tint would vanish here
    truth = np.zeros((200, 300), bool)
    truth[40:140, 60:160] = True
    prediction = np.zeros_like(truth)
    prediction[60:160, 90:190] = True
    draw_overlay(image, prediction, truth, overlay_title("slide_7", 0.9312), tmp_path / "o.png")
    png = cv2.cvtColor(cv2.imread(str(tmp_path / "o.png")), cv2.COLOR_BGR2RGB)
    assert share_near(png, rgb(PREDICTION_COLOUR)) > 0.002 and share_near(png, rgb(TRUTH_COLOUR)) > 0.002
    assert share_near(png, np.array([200, 40, 40])) > 0.3  # the tissue itself is not tinted
    (fig,) = figures
    assert fig.axes[0].get_title() == "slide_7 — Dice 0.931"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["prediction", "ground truth"]


def test_overlay_without_truth_says_so(tmp_path, figures):
    image = np.full((64, 64, 3), 240, np.uint8)
    prediction = np.zeros((64, 64), bool)
    prediction[10:20, 10:20] = True
    draw_overlay(image, prediction, None, overlay_title("unlabelled", None), tmp_path / "o.png")
    (fig,) = figures
    assert fig.axes[0].get_title() == "unlabelled — no ground truth"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["prediction"]
    assert overlay_title("s", math.nan) == "s — no ground truth"


def test_scores_table_rows_means_and_escaping():
    table = pd.DataFrame(
        {
            "slide_id": ["a<b", "c", "mean:kidney", "mean"],
            "split": ["val", "test", "all", "all"],
            "group": ["kidney", "kidney", "kidney", "all"],
            "dice": [0.91234, 0.5, 0.70617, 0.70617],
            "iou": [0.8, 0.33, 0.565, 0.565],
            "object_f1": [1.0, math.nan, 1.0, 1.0],
            "objects_true": [3, 2, 5, 5],
            "objects_matched": [3, 0, 3, 3],
        }
    )
    html = scores_html(table)
    assert '<table id="wsiseg-scores">' in html and "a&lt;b" in html and "<b" not in html.replace("<body", "")
    assert "0.912" in html and "3 of 3" in html and "0 of 2" in html and "–" in html
    assert "kidney (mean)" in html and "all slides (mean)" in html and html.count('<tr class="mean">') == 2
    assert "No slide with ground truth" in scores_html(table.iloc[:0])


def test_make_report_writes_scores_and_titled_overlays(tmp_path, figures):
    image = np.full((64, 80, 3), (230, 150, 200), np.uint8)
    truth = np.zeros((64, 80), np.uint8)
    truth[10:30, 10:30] = 1
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    slides = {
        "a": convert_slide(tmp_path / "img.tif", tmp_path / "a.zarr", mask=tmp_path / "truth.tif"),
        "u": convert_slide(tmp_path / "img.tif", tmp_path / "u.zarr"),
    }
    half = np.zeros_like(truth)
    half[20:40, 10:30] = 1  # Dice 0.5
    preds = {"a": write_prediction(tmp_path / "pa.zarr", half), "u": write_prediction(tmp_path / "pu.zarr", truth)}
    make_report(
        preds,
        slides,
        {"a": "val", "u": "test"},
        tmp_path / "sub.csv",
        tmp_path / "m.csv",
        tmp_path / "ov",
        scores_html=tmp_path / "scores.html",
    )
    assert [f.axes[0].get_title() for f in figures] == ["a — Dice 0.500", "u — no ground truth"]
    html = (tmp_path / "scores.html").read_text()
    assert "<td" in html and "0.500" in html and "all slides (mean)" in html and ">u<" not in html


def test_curves_have_integer_epoch_ticks(tmp_path, figures):
    from wsiseg.train import plot_curves

    metrics = pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "train_loss": [1.0, 0.7, 0.5],
            "val_loss": [0.9, 0.8, 0.6],
            "val_dice": [0.3, 0.5, 0.6],
            "val_iou": [0.2, 0.35, 0.45],
        }
    )
    plot_curves(metrics, tmp_path / "curves.png")
    plot_curves(metrics.iloc[:1], tmp_path / "one.png")  # a single epoch: no -0.04 .. 0.04 ticks either
    for fig in figures:
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert len(figures) == 2


def test_cli_report_writes_scores_and_detections(tmp_path):
    from wsiseg.cli import main

    image = np.full((48, 48, 3), (230, 150, 200), np.uint8)
    truth = np.zeros((48, 48), np.uint8)
    truth[8:20, 8:20] = 1
    truth[30:40, 30:44] = 1
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "truth.tif", truth)
    convert_slide(tmp_path / "img.tif", tmp_path / "zarr" / "s1.zarr", mask=tmp_path / "truth.tif")
    write_prediction(tmp_path / "pred" / "s1.zarr", truth)
    pd.DataFrame({"slide_id": ["s1"], "image": ["img.tif"], "mask": ["truth.tif"], "split": ["val"]}).to_csv(
        tmp_path / "s.csv", index=False
    )
    main(
        [
            "report",
            "--samples",
            str(tmp_path / "s.csv"),
            "--slides",
            str(tmp_path / "zarr"),
            "--predictions",
            str(tmp_path / "pred"),
            "--out-dir",
            str(tmp_path / "out"),
            "--object-type",
            "detection",
            "--class-name",
            "glomerulus",
        ]
    )
    features = json.loads((tmp_path / "out" / "geojson" / "s1.geojson").read_text())["features"]
    assert len(features) == 2 and {f["properties"]["objectType"] for f in features} == {"detection"}
    assert sorted(f["properties"]["measurements"]["Area px^2"] for f in features) == [140, 144]
    assert "<td>1.000</td>" in (tmp_path / "out" / "scores.html").read_text()
