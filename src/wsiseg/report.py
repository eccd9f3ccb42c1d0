"""Stage ``report``: RLE submission, per-slide metrics and overlay images.

Everything is computed chunk-wise from the prediction and slide stores:
the RLE by full-height column bands (column-major order without transposing
the whole mask), the confusion counts by row bands.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Mapping

import cv2
import numpy as np
import pandas as pd
import zarr

from . import rle
from .io import atomic_path
from .store import SlideStore

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["slide_id", "split", "dice", "iou", "precision", "recall", "tp", "fp", "fn"]


def _column_bands(mask: zarr.Array, width: int) -> Iterator[tuple[int, np.ndarray]]:
    for x0 in range(0, mask.shape[1], width):
        yield x0, np.asarray(mask[:, x0 : x0 + width])


def encode_store(prediction: str | Path, band: int = 512) -> str:
    """Column-major RLE of a prediction store's ``mask``, computed band by band."""
    mask = zarr.open_group(prediction, mode="r")["mask"]
    return rle.encode_bands(_column_bands(mask, band), mask.shape[0])


def scores(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Dice, IoU, precision and recall from confusion counts (empty vs empty scores 1)."""
    if tp + fp + fn == 0:
        return {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    return {
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
    }


def confusion(prediction: str | Path, slide: str | Path, band: int = 512) -> tuple[int, int, int]:
    """(tp, fp, fn) pixel counts of a prediction against the slide's ground truth, by row bands."""
    pred = zarr.open_group(prediction, mode="r")["mask"]
    truth = SlideStore(slide).mask_levels[0]
    if pred.shape != truth.shape[1:]:
        raise ValueError(f"{prediction}: prediction shape {pred.shape} differs from {slide} mask {truth.shape[1:]}")
    tp = fp = fn = 0
    for y0 in range(0, pred.shape[0], band):
        p = np.asarray(pred[y0 : y0 + band]).astype(bool)
        t = np.asarray(truth[0, y0 : y0 + band]).astype(bool)
        tp += int(np.count_nonzero(p & t))
        fp += int(np.count_nonzero(p & ~t))
        fn += int(np.count_nonzero(~p & t))
    return tp, fp, fn


def overlay(prediction: str | Path, slide: str | Path, out: str | Path, max_side: int = 1024) -> None:
    """Low-resolution PNG: the slide with prediction (red) and ground truth outline (green)."""
    store = SlideStore(slide)
    k = 0
    while k + 1 < len(store.levels) and max(store.levels[k].shape[1:]) > max_side:
        k += 1
    image = np.asarray(store.levels[k][:]).transpose(1, 2, 0).copy()
    h, w = image.shape[:2]
    step = 2**k
    pred = np.asarray(zarr.open_group(prediction, mode="r")["mask"][::step, ::step])[:h, :w].astype(bool)
    tinted = image.copy()
    tinted[pred] = (0.5 * tinted[pred] + 0.5 * np.array([230, 30, 30])).astype(np.uint8)
    if store.has_mask:
        truth = np.asarray(store.mask_levels[k][0]).astype(np.uint8)
        contours, _ = cv2.findContours(truth, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(tinted, contours, -1, (20, 200, 20), thickness=max(1, max(h, w) // 500))
    with atomic_path(out) as tmp:
        cv2.imwrite(str(tmp.with_suffix(".png")), cv2.cvtColor(tinted, cv2.COLOR_RGB2BGR))
        tmp.with_suffix(".png").rename(tmp)


def make_report(
    predictions: Mapping[str, str | Path],
    slides: Mapping[str, str | Path],
    splits: Mapping[str, str],
    submission: str | Path,
    metrics: str | Path,
    overlay_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Write the submission (test slides), per-slide metrics (slides with masks) and overlays.

    ``predictions`` and ``slides`` map slide ids to prediction and converted
    slide stores; ``splits`` gives each slide's split.  ``metrics`` gets one
    row per slide with ground truth plus a ``mean`` row (the Kaggle score:
    mean of per-slide Dice).  Returns the metrics table.
    """
    rows = []
    for slide_id in sorted(predictions):
        if overlay_dir is not None:
            overlay(predictions[slide_id], slides[slide_id], Path(overlay_dir) / f"{slide_id}.png")
        if SlideStore(slides[slide_id]).has_mask:
            tp, fp, fn = confusion(predictions[slide_id], slides[slide_id])
            rows.append({"slide_id": slide_id, "split": splits[slide_id], **scores(tp, fp, fn), "tp": tp, "fp": fp, "fn": fn})
            log.info("report %s: dice %.4f", slide_id, rows[-1]["dice"])
    table = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    if len(table):
        mean = table[["dice", "iou", "precision", "recall"]].mean()
        table.loc[len(table)] = {"slide_id": "mean", "split": "all", **mean.to_dict(), "tp": table.tp.sum(), "fp": table.fp.sum(), "fn": table.fn.sum()}
    with atomic_path(metrics) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    test_ids = [s for s in sorted(predictions) if splits[s] == "test"]
    sub = pd.DataFrame({"id": test_ids, "predicted": [encode_store(predictions[s]) for s in test_ids]})
    with atomic_path(submission) as tmp:
        sub.to_csv(tmp, index=False)
    return table
