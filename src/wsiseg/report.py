"""Stage ``report``: RLE submission, per-slide metrics, overlays and GeoJSON objects.

Pixel metrics and the RLE are computed chunk-wise from the level-0 stores:
the RLE by full-height column bands (column-major order without transposing
the whole mask), confusion counts by row bands.  Object-level metrics and
GeoJSON polygons use the finest pyramid level that fits ``max_side``.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from skimage.measure import label

from wsiseg import rle
from wsiseg.config.params import ReportParams, with_options
from wsiseg.errors import SampleSheetError, StoreError
from wsiseg.imaging import vector, views
from wsiseg.imaging.objects import ObjectOverlap
from wsiseg.modelcard import label_colour
from wsiseg.store.prediction import Prediction, write_provenance
from wsiseg.store.slide import SlideStore
from wsiseg.utils.io import atomic_path

log = logging.getLogger(__name__)

METRIC_COLUMNS = [
    "slide_id",
    "split",
    "dice",
    "iou",
    "precision",
    "recall",
    "object_f1",
    "glas_f1",
    "object_dice",
    "object_hausdorff",
    "object_hausdorff_um",
    "aji",
    "pq",
    "dq",
    "sq",
    "objects_true",
    "objects_pred",
    "objects_matched",
    "tp",
    "fp",
    "fn",
]


def _column_bands(pred: Prediction, width: int) -> Iterator[tuple[int, np.ndarray]]:
    """Full-height level-0 mask bands ``width`` px wide, left to right; the next band is read while
    the caller works on this one."""
    starts = range(0, pred.width, width)
    with ThreadPoolExecutor(1, thread_name_prefix="wsiseg-bands") as reader:
        read = lambda x0: pred.mask_plane(0, slice(None), slice(x0, x0 + width))  # noqa: E731
        pending = reader.submit(read, 0)
        for x0 in starts:
            band = pending.result()
            if x0 + width < pred.width:
                pending = reader.submit(read, x0 + width)
            yield x0, band


def encode_store(prediction: str | Path, band: int = 512) -> str:
    """Column-major RLE of a prediction's level-0 mask, computed band by band."""
    pred = Prediction(prediction)
    return rle.encode_bands(_column_bands(pred, band), pred.height)


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


def _truth(slide: str | Path, prediction: Prediction) -> SlideStore:
    """The slide store whose ground truth ``prediction`` is scored against, after checking their shapes agree."""
    store = SlideStore(slide)
    truth = tuple(store.mask_levels[0].shape[-2:])
    if truth != prediction.shape:
        raise StoreError(f"{prediction.path}: prediction shape {prediction.shape} differs from {slide} mask {truth}")
    return store


def confusion_matrix(prediction: str | Path, slide: str | Path, band: int = 512) -> np.ndarray:
    """Pixel confusion matrix ``M[truth, predicted]`` over classes, accumulated by row bands.

    Binary predictions compare foreground (any label > 0) with background (2 x 2)."""
    pred = Prediction(prediction)
    truth = _truth(slide, pred)
    classes = max(2, int(pred.attrs.get("classes", 1)))
    matrix = np.zeros((classes, classes), np.int64)
    for y0 in range(0, pred.height, band):
        p = pred.mask_plane(0, slice(y0, y0 + band)).astype(np.int64)
        t = truth.mask_plane(0, slice(y0, y0 + band)).astype(np.int64)
        if classes == 2:
            p, t = p > 0, t > 0
        t = np.minimum(t, classes - 1)
        matrix += np.bincount((t * classes + p).ravel(), minlength=classes * classes).reshape(classes, classes)
    return matrix


def foreground_counts(matrix: np.ndarray) -> tuple[int, int, int]:
    """(tp, fp, fn) foreground pixel counts of a confusion matrix (any class > 0 is foreground)."""
    return int(matrix[1:, 1:].sum()), int(matrix[0, 1:].sum()), int(matrix[1:, 0].sum())


def class_label(c: int, names: Sequence[str] | None = None) -> str:
    """Name of class ``c`` from ``names`` (indexed by class, 0 = background), else ``class{c}``."""
    return names[c] if names and c < len(names) else f"class{c}"


def class_column(c: int, names: Sequence[str] | None = None) -> str:
    """Metrics column of class ``c``: ``dice_{name}`` (see :func:`class_label`)."""
    return f"dice_{class_label(c, names)}"


def class_dice(matrix: np.ndarray, names: Sequence[str] | None = None) -> dict[str, float]:
    """Per-class Dice (see :func:`class_column`) for classes 1.. of a multi-class confusion matrix."""
    if len(matrix) <= 2:
        return {}
    out = {}
    for c in range(1, len(matrix)):
        tp = matrix[c, c]
        fp, fn = matrix[:, c].sum() - tp, matrix[c, :].sum() - tp
        out[class_column(c, names)] = scores(tp, fp, fn)["dice"]
    return out


def objects(mask: np.ndarray, instances: bool = False) -> tuple[np.ndarray, int]:
    """Object ids 1..n (0 = background) and n: connected components of a mask, or renumbered instance ids."""
    if not instances:
        return label(mask > 0, return_num=True, connectivity=2)
    ids, compact = np.unique(mask, return_inverse=True)
    compact = compact.reshape(mask.shape)
    return (compact, len(ids) - 1) if ids[0] == 0 else (compact + 1, len(ids))


def match_objects(
    pred: np.ndarray, truth: np.ndarray, iou: float = 0.5, truth_instances: bool = False
) -> tuple[int, int, int]:
    """(true objects, predicted objects, matched pairs with IoU > ``iou``) of two masks.

    Objects are connected components; ``truth_instances`` says ``truth``
    holds object ids instead (touching objects stay apart).  With ``iou`` >= 0.5
    a match is unique, so no assignment problem arises."""
    overlap = ObjectOverlap(objects(truth, truth_instances)[0], objects(pred)[0])
    return overlap.n_truth, overlap.n_pred, overlap.matches(iou)


def object_scores(
    prediction: str | Path, slide: str | Path, iou: float = 0.5, max_side: int = 8192
) -> dict[str, float]:
    """Object metrics on the finest level of at most ``max_side`` px (see :mod:`wsiseg.imaging.objects`).

    ``object_f1``: F1 of matches at IoU > ``iou`` (glomeruli / nuclei counts; at 0.5 it equals ``dq``), with
    ``objects_true``, ``objects_pred``, ``objects_matched``; the GlaS gland metrics ``glas_f1``, ``object_dice``
    and ``object_hausdorff`` (in level-0 pixels: the level's distance x its downscale; ``object_hausdorff_um``
    in micrometres where the prediction records the slide's ``mpp``, else NaN); the nuclei metrics ``aji``
    and ``pq`` = ``dq`` x ``sq`` (matches at IoU > 0.5).

    True objects are the slide's instance ids where the store has them and
    level 0 is used, else connected components of the mask; predicted objects are the mask's 8-connected
    components."""
    pred = Prediction(prediction)
    store = _truth(slide, pred)
    truth = store.mask_levels
    k = min(pred.level_for(max_side), len(truth) - 1)
    instances = store.instance_plane() if k == 0 else None
    reference = instances if instances is not None else store.mask_plane(k)
    overlap = ObjectOverlap(objects(reference, instances is not None)[0], objects(pred.mask_plane(k))[0])
    n_true, n_pred, matched = overlap.n_truth, overlap.n_pred, overlap.matches(iou)
    f1 = 1.0 if n_true + n_pred == 0 else 2 * matched / (n_true + n_pred)
    values = overlap.scores()
    values["object_hausdorff"] *= 2.0**k
    mpp = pred.attrs.get("mpp")
    values["object_hausdorff_um"] = values["object_hausdorff"] * float(mpp) if mpp else float("nan")
    return {
        "object_f1": f1,
        **values,
        "objects_true": n_true,
        "objects_pred": n_pred,
        "objects_matched": matched,
    }


def overlay(
    prediction: str | Path,
    slide: str | Path,
    out: str | Path,
    max_side: int = 1024,
    slide_id: str | None = None,
    dice: float | None = None,
) -> None:
    """Low-resolution PNG of the slide with the prediction (cyan) and ground-truth (yellow) outlines,
    a legend, and ``slide_id — Dice`` as title (see :func:`wsiseg.imaging.views.draw_overlay`)."""
    store, pred = SlideStore(slide), Prediction(prediction)
    k = min(pred.level_for(max_side), len(store.levels) - 1)
    image = np.asarray(store.levels[k][:]).transpose(1, 2, 0)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    h, w = image.shape[:2]
    mask = pred.mask_plane(k)[:h, :w] > 0
    truth = store.mask_plane(k)[:h, :w] > 0 if store.has_mask else None
    title = views.overlay_title(slide_id or Path(slide).stem, dice if truth is not None else None)
    views.draw_overlay(image, mask, truth, title, out)


def export_geojson(
    prediction: str | Path,
    out: str | Path,
    class_name: str = "foreground",
    max_side: int = 8192,
    class_names: Sequence[str] | None = None,
    object_type: str = "annotation",
) -> int:
    """Write the predicted objects as a QuPath GeoJSON FeatureCollection; return their number.

    Objects are the 8-connected components of the mask (as the object F1
    counts them), traced on pixel edges of the finest pyramid level of at most
    ``max_side`` px and scaled to level-0 pixel coordinates: valid Polygons or
    MultiPolygons, RFC 7946 ring orientation, single pixels kept.  Each
    feature has a UUID ``id`` and QuPath ``properties``: ``objectType``
    (``object_type``), ``classification {name, color}`` and ``measurements``
    (``Area px^2`` in level-0 pixels, ``Area µm^2`` when the store records an
    ``mpp`` attribute, ``Mean probability`` of the object's class).  Binary
    predictions are classified ``class_name``; multi-class ones per class,
    named by ``class_names`` (see :func:`class_label`)."""
    features = predicted_features(Prediction(prediction), class_name, max_side, class_names, object_type)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return len(features)


def predicted_features(
    pred: Prediction,
    class_name: str = "foreground",
    max_side: int = 8192,
    class_names: Sequence[str] | None = None,
    object_type: str = "annotation",
) -> list[dict]:
    """The QuPath GeoJSON Features of a prediction's objects (see :func:`export_geojson`)."""
    k = pred.level_for(max_side)
    labels = pred.mask_plane(k)
    probability = pred.probabilities(k)
    classes = int(pred.attrs.get("classes", 1))
    layers = (
        [(class_name, labels > 0, 1)]
        if classes == 1
        else [(class_label(c, class_names), labels == c, c) for c in range(1, classes)]
    )
    slide_id = str(pred.attrs.get("slide_id", pred.path.stem))
    features = []
    for name, mask, c in layers:
        colour = label_colour(c)
        p = probability[0 if classes == 1 else c][: mask.shape[0], : mask.shape[1]]
        features += vector.qupath_features(
            mask, name, colour, slide_id, p, scale=2.0**k, mpp=pred.attrs.get("mpp"), object_type=object_type
        )
    return features


def submission_table(predictions: Mapping[str, str | Path], ids: list[str], sample: str | Path | None) -> pd.DataFrame:
    """``id,predicted`` rows for ``ids``, in the order (and with the ids) of a sample submission if given."""
    if sample is not None:
        wanted = pd.read_csv(sample, dtype=str)
        if "id" not in wanted.columns:
            raise SampleSheetError(f"{sample}: sample submission needs an 'id' column, found {list(wanted.columns)}")
        missing = [i for i in wanted["id"] if i not in predictions]
        if missing:
            raise SampleSheetError(
                f"{sample}: no prediction for id(s) {missing}; add them to the sample sheet as test slides"
            )
        extra = sorted(set(ids) - set(wanted["id"]))
        if extra:
            log.warning("%s: test slides %s are not in the sample submission and are left out", sample, extra)
        ids = wanted["id"].tolist()
    return pd.DataFrame({"id": ids, "predicted": [encode_store(predictions[i]) for i in ids]})


def slide_metrics(
    prediction: str | Path, slide: str | Path, object_iou: float = 0.5, class_names: Sequence[str] | None = None
) -> dict[str, float]:
    """Pixel (foreground and, multi-class, per class) and object metrics of one slide."""
    m = confusion_matrix(prediction, slide)
    tp, fp, fn = foreground_counts(m)
    return {
        **scores(tp, fp, fn),
        **object_scores(prediction, slide, object_iou),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        **class_dice(m, class_names),
    }


# averaged over slides in the summary rows; Hausdorff where it is defined (objects on one side only: NaN, left out)
MEAN_COLUMNS = tuple(METRIC_COLUMNS[METRIC_COLUMNS.index("dice") : METRIC_COLUMNS.index("objects_true")])
SUM_COLUMNS = ("objects_true", "objects_pred", "objects_matched", "tp", "fp", "fn", "tiles_skipped", "tiles_total")
TISSUE_COLUMNS = ["tissue_method", "tiles_skipped", "tiles_total", "tissue_fallback"]


def tissue_info(prediction: str | Path) -> dict:
    """Tissue detection of a prediction (``tissue_method``, ``tiles_skipped``, ``tiles_total``,
    ``tissue_fallback``) from its store's attributes; values are None for stores that do not record it."""
    attrs = Prediction(prediction).attrs
    tissue = attrs.get("tissue") or {}
    return {
        "tissue_method": tissue.get("method"),
        "tiles_skipped": tissue.get("tiles_skipped", attrs.get("tiles_skipped")),
        "tiles_total": tissue.get("tiles_total", attrs.get("tiles_total")),
        "tissue_fallback": tissue.get("fallback"),
    }


def warn_tissue(slide_id: str, info: Mapping) -> None:
    """Log a warning when tissue detection failed on a slide: fell back to every tile, or skipped every tile."""
    if info["tissue_fallback"]:
        log.warning(
            "report %s: tissue detection (%s) found almost no tissue; every tile was predicted instead "
            "(set predict.tissue_method to suit these slides)",
            slide_id,
            info["tissue_method"],
        )
    elif info["tiles_total"] and info["tiles_skipped"] == info["tiles_total"]:
        log.warning(
            "report %s: every tile (%d) was skipped as non-tissue by tissue detection (%s): the prediction is empty",
            slide_id,
            info["tiles_total"],
            info["tissue_method"] or "unknown method",
        )


def summary_rows(table: pd.DataFrame, per_class: list[str]) -> list[dict]:
    """Mean rows of a per-slide metrics table: one per ``group`` (``mean:{group}``) when it has
    that column, then ``mean`` over all slides (the Kaggle score: mean per-slide Dice)."""
    subsets = [(f"mean:{g}", g, rows) for g, rows in table.groupby("group", sort=True)] if "group" in table else []
    rows = []
    for slide_id, group, subset in subsets + [("mean", "all", table)]:
        rows.append(
            {
                "slide_id": slide_id,
                "split": "all",
                **({"group": group} if "group" in table else {}),
                **{c: subset[c].mean() for c in (*MEAN_COLUMNS, *per_class)},
                **{
                    c: pd.to_numeric(subset[c]).sum(min_count=1) for c in SUM_COLUMNS
                },  # tile counts: NaN when unrecorded
            }
        )
    return rows


def check_predictions(predictions: Mapping[str, str | Path | None], slides: Mapping[str, str | Path]) -> None:
    """Raise :class:`~wsiseg.errors.StoreError` naming the slide and path when a slide to report has no prediction
    store: ``slides`` names one that ``predictions`` does not, or a prediction path is None or does not exist."""
    for slide_id in sorted(set(slides) | set(predictions)):
        path = predictions.get(slide_id)
        if path is None:
            raise StoreError(
                f"slide {slide_id}: no prediction store given for it (slide store {slides.get(slide_id)}); "
                "run predict on it or leave it out of the report"
            )
        if not Path(path).exists():
            raise StoreError(f"slide {slide_id}: prediction store {path} does not exist; run predict on it first")
        if slide_id not in slides:
            raise StoreError(f"slide {slide_id}: no converted slide store given for prediction {path}")


def make_report(
    predictions: Mapping[str, str | Path],
    slides: Mapping[str, str | Path],
    splits: Mapping[str, str],
    submission: str | Path,
    metrics: str | Path,
    overlay_dir: str | Path | None = None,
    geojson_dir: str | Path | None = None,
    *,
    params: ReportParams | None = None,
    groups: Mapping[str, str] | None = None,
    scores_html: str | Path | None = None,
    provenance: str | Path | None = None,
    config_hash: str | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Write the submission (test slides), per-slide metrics (slides with masks), overlays and GeoJSON.

    ``params`` (:class:`~wsiseg.config.params.ReportParams`, config ``report``: ``sample_submission``,
    ``object_iou``, ``class_name``, ``class_names``, ``object_type``) says how; ``options`` are single fields of
    it given as keywords (``object_iou=0.3``), applied over ``params``.

    ``predictions`` and ``slides`` map slide ids to prediction and converted
    slide stores; ``splits`` gives each slide's split, ``groups`` (optional)
    a category such as the organ.  ``metrics`` gets one row per slide with
    ground truth, a ``mean:{group}`` row per group and a ``mean`` row (the
    Kaggle score: mean of per-slide Dice).  Multi-class columns are named by
    ``class_names`` (index = class).  Each slide's tissue detection (method,
    tiles skipped of all, whether it fell back to every tile) is added from its
    prediction store, with a warning where it fell back or skipped every tile.
    Overlays carry each slide's Dice in their title; GeoJSON objects are
    QuPath ``object_type`` objects (see :func:`export_geojson`).
    Every slide of ``slides`` needs an existing prediction store in ``predictions`` (else
    :class:`~wsiseg.errors.StoreError` naming the slide and path, before anything is computed).
    ``scores_html`` (optional) gets the scores as an HTML table for the
    report's landing page (:func:`wsiseg.imaging.views.scores_html`).
    ``provenance`` (default ``provenance.json`` next to ``metrics``) records
    the models (sha256), config hashes and wsiseg versions that made the
    predictions, and this report's ``config_hash`` and version
    (:func:`wsiseg.store.prediction.write_provenance`).
    Returns the metrics table.
    """
    params = with_options(params or ReportParams(), options)
    check_predictions(predictions, slides)
    class_name, class_names, object_iou = params.class_name, params.class_names, params.object_iou
    columns = METRIC_COLUMNS[:2] + (["group"] if groups else []) + METRIC_COLUMNS[2:] + TISSUE_COLUMNS
    rows = []
    for slide_id in sorted(predictions):
        tissue = tissue_info(predictions[slide_id])
        warn_tissue(slide_id, tissue)
        if geojson_dir is not None:
            export_geojson(
                predictions[slide_id],
                Path(geojson_dir) / f"{slide_id}.geojson",
                class_name,
                class_names=class_names,
                object_type=params.object_type,
            )
        dice = None
        if SlideStore(slides[slide_id]).has_mask:
            values = slide_metrics(predictions[slide_id], slides[slide_id], object_iou, class_names)
            rows.append(
                {
                    "slide_id": slide_id,
                    "split": splits[slide_id],
                    **({"group": groups[slide_id]} if groups else {}),
                    **values,
                    **tissue,
                }
            )
            log.info("report %s: dice %.4f, object F1 %.4f", slide_id, rows[-1]["dice"], rows[-1]["object_f1"])
            dice = rows[-1]["dice"]
        if overlay_dir is not None:
            overlay(
                predictions[slide_id],
                slides[slide_id],
                Path(overlay_dir) / f"{slide_id}.png",
                slide_id=slide_id,
                dice=dice,
            )
    per_class = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in columns]
    table = pd.DataFrame(rows, columns=columns + per_class)
    if len(table):
        table = pd.concat(
            [table, pd.DataFrame(summary_rows(table, per_class), columns=table.columns)], ignore_index=True
        )
    with atomic_path(metrics) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    if scores_html is not None:
        views.write_scores_html(table, scores_html)
    write_provenance(predictions, provenance or Path(metrics).with_name("provenance.json"), config_hash)
    test_ids = [s for s in sorted(predictions) if splits[s] == "test"]
    with atomic_path(submission) as tmp:
        submission_table(predictions, test_ids, params.sample_submission).to_csv(tmp, index=False)
    return table
