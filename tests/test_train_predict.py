"""Tiny inference runs on the synthetic demo (seconds on CPU); training tests are in test_train.py."""

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from wsiseg.convert import convert_slide
from wsiseg.patches import PatchParams, extract_patches
from wsiseg.predict import PredictParams, gaussian_window, predict_slide
from wsiseg.train import TrainParams, train_model

TINY_MODEL = dict(encoder_depth=3, decoder_channels=(32, 16, 8), batch_size=8, epochs=1, accelerator="cpu")


@pytest.fixture(scope="module")
def tiny_patches(tiny_demo, tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
    samples = pd.read_csv(tiny_demo / "samples.csv")
    stores = {}
    for row in samples.itertuples():
        slide = convert_slide(row.image, work / f"{row.slide_id}.zarr", mask=row.mask, slide_id=row.slide_id, chunk=128)
        stores[row.slide_id] = slide
        extract_patches(slide, work / f"p_{row.slide_id}.zarr", work / f"p_{row.slide_id}.csv", PatchParams(size=64, downscale=2, stride=32, min_coverage=0.05))
    return work, stores


def test_prediction_store_matches_slide_and_threshold(tiny_patches, tmp_path):
    work, stores = tiny_patches
    train_model([work / "p_demo_0.zarr"], [work / "p_demo_1.zarr"], tmp_path / "m", TrainParams(**TINY_MODEL))
    out = predict_slide(stores["demo_2"], tmp_path / "m" / "model.ckpt", tmp_path / "p.zarr", PredictParams(tile=64, overlap=16, threshold=0.4, min_tissue=0))
    root = zarr.open_group(out, mode="r")
    prob, mask = root["prob/0"][0], root["mask/0"][0]
    assert prob.shape == mask.shape == (384, 512)
    assert set(np.unique(mask)) <= {0, 1}
    # the mask is the thresholded probability (up to uint8 rounding of the stored probability)
    assert ((prob > 0.4 * 255 + 1) <= (mask == 1)).all() and ((prob < 0.4 * 255 - 1) <= (mask == 0)).all()
    assert root.attrs["downscale"] == 2


def test_overlap_must_be_smaller_than_tile(tiny_patches, tmp_path):
    _, stores = tiny_patches
    with pytest.raises(ValueError, match="overlap"):
        predict_slide(stores["demo_2"], tmp_path / "none.ckpt", tmp_path / "p.zarr", PredictParams(tile=64, overlap=64))


def test_gaussian_window_is_positive_and_peaks_in_the_centre():
    w = gaussian_window(64)
    assert w.min() > 0 and w[32, 32] == w.max() and w[0, 0] < 0.01
