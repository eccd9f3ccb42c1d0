"""Stain handling: HED jitter, Macenko/Reinhard normalisation, and the normaliser travelling from training to prediction."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from skimage.color import combine_stains, rgb_from_hed
from support.patches import TINY, write_store

from wsiseg.imaging.stain import HEDJitter, fit_normaliser, fit_training_normaliser, hed_jitter, normalise_image
from wsiseg.nn.augment import build_augmentation, reseed
from wsiseg.nn.module import load_model
from wsiseg.train import TrainParams, train_model

# another lab's dyes: a bluer haematoxylin and a more orange eosin (rows: H, E, DAB optical densities)
OTHER_LAB = np.array([[0.50, 0.80, 0.35], [0.05, 0.85, 0.45], [0.27, 0.57, 0.78]])


def he_image(stains: np.ndarray = rgb_from_hed, seed: int = 0, size: int = 128) -> np.ndarray:
    """Synthetic H&E: haematoxylin nuclei (discs) on eosin stroma, composed with the stain matrix ``stains``."""
    rng = np.random.default_rng(seed)
    nuclei = np.zeros((size, size), np.float32)
    for _ in range(12):
        cv2.circle(nuclei, tuple(int(v) for v in rng.integers(0, size, 2)), int(rng.integers(5, 12)), 1.0, -1)
    noise = rng.random((2, size, size))
    concentrations = np.stack(
        [0.08 * nuclei + 0.015 + 0.02 * noise[0], 0.04 - 0.02 * nuclei + 0.02 * noise[1], np.zeros((size, size))], -1
    )
    return (np.clip(combine_stains(concentrations, stains), 0, 1) * 255).astype(np.uint8)


def test_hed_jitter_is_identity_at_rest_and_seeded_per_transform():
    image = he_image()
    assert np.abs(hed_jitter(image, [1, 1, 1], [0, 0, 0]).astype(int) - image).max() <= 1
    pipeline = build_augmentation({"hed": {"p": 1.0, "alpha": 0.2, "beta": 0.02}}, seed=3)
    out = []
    for key in ((3, 0, 7), (3, 0, 7), (3, 1, 7)):
        reseed(pipeline, *key)
        out.append(pipeline(image=image)["image"])
    assert np.array_equal(out[0], out[1]) and not np.array_equal(out[0], out[2])
    assert 2 < np.abs(out[0].astype(int) - image).mean() < 60  # a stain change, not noise or a wipe
    with pytest.raises(ValueError, match="alpha must be in"):
        HEDJitter(alpha=1.5)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_normalisation_maps_another_labs_stain_towards_the_reference(method):
    reference, restained = he_image(seed=1), he_image(OTHER_LAB, seed=1)
    normaliser = fit_normaliser(method, [he_image(seed=2)])
    assert json.loads(json.dumps(normaliser)) == normaliser  # plain values: checkpoint and model card carry it
    before = np.abs(restained.astype(int) - reference).mean()
    after = np.abs(normalise_image(restained, normaliser).astype(int) - reference).mean()
    assert after < 0.5 * before, (before, after)
    blank = np.full((64, 64, 3), 250, np.uint8)
    assert normalise_image(blank, normaliser).shape == blank.shape and normalise_image(restained, None) is restained


def test_normaliser_needs_stained_pixels():
    with pytest.raises(ValueError, match="fewer than 500 stained pixels"):
        fit_normaliser("macenko", [np.full((32, 32, 3), 250, np.uint8)])
    with pytest.raises(ValueError, match="'vahadane' is unknown"):
        fit_normaliser("vahadane", [he_image()])


def test_stain_normaliser_is_fitted_at_training_and_saved_with_the_model(tmp_path):
    train, val = [write_store(tmp_path / "train.zarr", 16, seed=1)], [write_store(tmp_path / "val.zarr", 8, seed=2)]
    assert fit_training_normaliser(None, None, train) is None
    params = TrainParams(**TINY, stain_normalise="reinhard", augment={"hflip": 0.5, "hed": 0.5})
    train_model(train, val, tmp_path / "model", params, threads=2)
    saved = load_model(tmp_path / "model" / "model.ckpt").hparams["stain"]
    assert saved == fit_training_normaliser("reinhard", None, train) and saved["method"] == "reinhard"
    assert json.loads((tmp_path / "model" / "model.json").read_text())["stain_normaliser"] == saved
