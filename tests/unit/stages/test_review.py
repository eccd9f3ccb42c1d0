"""Predict, review in QuPath, retrain: the most uncertain regions ranked for a pathologist, the predicted
objects editable, and a corrected QuPath export used as the slide's mask."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import zarr
from shapely.geometry import shape

from wsiseg.errors import ConfigError
from wsiseg.review import entropy, review_regions, write_review


def test_entropy_is_zero_when_sure_and_one_at_a_coin_toss():
    binary = np.array([[[0.0, 1.0, 0.5]]], np.float32)
    assert np.allclose(entropy(binary), [[0, 0, 1]], atol=1e-5)
    three = np.array([[[1.0, 1 / 3]], [[0.0, 1 / 3]], [[0.0, 1 / 3]]], np.float32)
    assert np.allclose(entropy(three), [[0, 1]], atol=1e-5)


def test_regions_are_ranked_by_uncertainty(tmp_path):
    from support.stores import write_prediction

    mask = np.zeros((64, 96), np.uint8)
    store = write_prediction(tmp_path / "p.zarr", mask)
    root = zarr.open_group(store, mode="r+")
    prob = np.zeros(root["0"].shape, np.uint8)  # certain background everywhere ...
    prob[..., 32:64, 64:96] = 128  # ... but a coin toss in the bottom-right square
    prob[..., 0:32, 32:64] = 60  # and a fairly uncertain top-middle one
    root["0"][:] = prob
    regions = review_regions(store, top=3, tile=32)
    assert [r[2] for r in regions[:2]] == [(64, 32, 96, 64), (32, 0, 64, 32)]
    assert regions[0][1] > 0.99 and regions[0][1] > regions[1][1] > regions[2][1]
    with pytest.raises(ConfigError, match="top"):
        review_regions(store, top=0)


def test_predict_review_correct_and_retrain(tiny_demo, tiny_trained, tmp_path):
    from wsiseg.convert import convert_slide
    from wsiseg.patches import PatchParams, extract_patches
    from wsiseg.predict import PredictParams, predict_slide
    from wsiseg.store.slide import SlideStore

    slides, checkpoint = tiny_trained
    prediction = predict_slide(
        slides["demo_2"], checkpoint, tmp_path / "p.zarr", PredictParams(tile=64, overlap=16, min_tissue=0)
    )
    review = json.loads(write_review(prediction, tmp_path / "demo_2.geojson", top=5, tile=128).read_text())
    regions = [f for f in review["features"] if f["properties"]["classification"]["name"] == "Review"]
    objects = [f for f in review["features"] if f["properties"]["classification"]["name"] == "foreground"]
    assert len(regions) == 5 and all(f["properties"]["isLocked"] for f in regions)
    ranks = [f["properties"]["measurements"]["Review rank"] for f in regions]
    scores = [f["properties"]["measurements"]["Mean entropy"] for f in regions]
    assert ranks == [1, 2, 3, 4, 5] and scores == sorted(scores, reverse=True)
    assert objects and not any(f["properties"]["isLocked"] for f in objects)

    # the pathologist's edits, as QuPath exports them: the largest object deleted, one object drawn
    largest = max(objects, key=lambda f: shape(f["geometry"]).area)
    kept = [f for f in review["features"] if f is not largest]
    drawn = {
        "type": "Feature",
        "id": "drawn-by-hand",
        "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [60, 10], [60, 50], [10, 50], [10, 10]]]},
        "properties": {
            "objectType": "annotation",
            "isLocked": False,
            "classification": {"name": "foreground", "color": [200, 0, 0]},
        },
    }
    corrected = tmp_path / "demo_2_corrected.geojson"
    corrected.write_text(json.dumps({"type": "FeatureCollection", "features": [*kept, drawn]}))

    image = pd.read_csv(tiny_demo / "samples.csv").set_index("slide_id").loc["demo_2", "image"]
    store = SlideStore(convert_slide(image, tmp_path / "c.zarr", mask=corrected, slide_id="demo_2", chunk=128))
    mask = store.mask_plane(0)
    assert mask[10:50, 10:60].all()  # the drawn object is foreground
    inside = shape(largest["geometry"]).representative_point()
    assert mask[int(inside.y), int(inside.x)] == 0  # the deleted one is not
    x0, y0, x1, y1 = (int(v) for v in shape(regions[0]["geometry"]).bounds)
    predicted = zarr.open_group(prediction, mode="r")["labels/mask/0"][y0:y1, x0:x1]
    assert mask[y0:y1, x0:x1].sum() <= predicted.sum() + 40 * 50  # a Review square is no object itself
    table = extract_patches(store.path, tmp_path / "pc.zarr", tmp_path / "pc.csv", PatchParams(size=64, downscale=2))
    assert len(table) > 0 and table["coverage"].max() > 0  # retraining reads the corrected mask
