"""Stage review: the regions of a prediction most worth a pathologist's time, for QuPath.

:func:`write_review` writes one QuPath-importable GeoJSON per predicted slide: the ``top`` square regions
(``tile`` level-0 pixels a side) where the model is least sure, ranked by the mean entropy of its
probabilities (0 = certain, 1 = a coin toss), as locked annotations classified ``Review`` with their rank and
score as measurements, and the predicted objects as editable annotations (as :func:`wsiseg.report.
export_geojson` writes them).  Corrected in QuPath and exported again (File > Export objects as GeoJSON), the
file is a mask a sample sheet can name: the ``Review`` regions are not foreground
(:data:`wsiseg.annotations.polygons.IGNORED_CLASSES`), and retraining uses the edited objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from wsiseg.annotations.polygons import REVIEW_CLASS
from wsiseg.errors import ConfigError
from wsiseg.report import predicted_features
from wsiseg.store.prediction import Prediction
from wsiseg.utils.io import atomic_path

REVIEW_COLOUR = (255, 200, 0)


def entropy(probability: np.ndarray) -> np.ndarray:
    """Per-pixel uncertainty 0..1 of probabilities (channels, h, w): the binary entropy of one foreground
    channel, else the class entropy over log(classes)."""
    p = np.clip(probability.astype(np.float64), 1e-7, 1 - 1e-7)
    if p.shape[0] == 1:
        q = p[0]
        return (-(q * np.log2(q) + (1 - q) * np.log2(1 - q))).astype(np.float32)
    return (-(p * np.log(p)).sum(axis=0) / np.log(p.shape[0])).astype(np.float32)


def review_regions(
    prediction: str | Path, top: int = 20, tile: int = 512, max_side: int = 8192
) -> list[tuple[int, float, tuple[int, int, int, int]]]:
    """(rank 1.., mean entropy, (x0, y0, x1, y1) in level-0 pixels) of the ``top`` most uncertain
    ``tile``-pixel squares of a prediction, scored on a pyramid level of at most ``max_side`` px."""
    if top < 1 or tile < 1:
        raise ConfigError(f"review: top ({top}) and tile ({tile}) must be at least 1")
    pred = Prediction(prediction)
    classes = int(pred.attrs.get("classes", 1))
    k = pred.level_for(max_side)
    probability = pred.probabilities(k)
    if pred.attrs.get("contour_channel") is not None:
        probability = probability[:classes]
    score = entropy(probability)
    step = max(1, int(round(tile / 2**k)))  # the tile on level k
    rows, cols = -(-score.shape[0] // step), -(-score.shape[1] // step)
    padded = np.zeros((rows * step, cols * step), np.float32)
    padded[: score.shape[0], : score.shape[1]] = score
    means = padded.reshape(rows, step, cols, step).mean(axis=(1, 3))
    order = np.argsort(-means, axis=None, kind="stable")[:top]
    regions = []
    for rank, flat in enumerate(order, start=1):
        r, c = divmod(int(flat), cols)
        x0, y0 = c * tile, r * tile
        box = (x0, y0, min(pred.width, x0 + tile), min(pred.height, y0 + tile))
        regions.append((rank, float(means[r, c]), box))
    return regions


def region_feature(slide_id: str, rank: int, score: float, box: tuple[int, int, int, int]) -> dict:
    """A locked QuPath annotation classified ``Review`` over ``box`` with its rank and score."""
    x0, y0, x1, y1 = box
    return {
        "type": "Feature",
        "id": f"{slide_id}-review-{rank}",
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        "properties": {
            "objectType": "annotation",
            "isLocked": True,
            "name": f"review {rank}",
            "classification": {"name": REVIEW_CLASS, "color": list(REVIEW_COLOUR)},
            "measurements": {"Review rank": rank, "Mean entropy": round(score, 4)},
        },
    }


def write_review(
    prediction: str | Path,
    out: str | Path,
    top: int = 20,
    tile: int = 512,
    class_name: str = "foreground",
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write ``out``: a QuPath GeoJSON FeatureCollection of the ``top`` regions to review (see the module
    docstring) and the predicted objects, editable.  Returns ``out``."""
    pred = Prediction(prediction)
    slide_id = str(pred.attrs.get("slide_id", pred.path.stem))
    regions = [region_feature(slide_id, *r) for r in review_regions(prediction, top, tile)]
    objects = predicted_features(pred, class_name, class_names=class_names)
    for feature in objects:
        feature["properties"]["isLocked"] = False
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": regions + objects}))
    return Path(out)


def write_reviews(
    predictions: Sequence[str | Path], out_dir: str | Path, top: int = 20, tile: int = 512, **names
) -> list[Path]:
    """:func:`write_review` of several prediction stores into ``out_dir/<slide>.geojson``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        write_review(p, out_dir / f"{Path(p).name.removesuffix('.zarr')}.geojson", top, tile, **names)
        for p in predictions
    ]
