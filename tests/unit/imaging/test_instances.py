"""Separating touching objects (watershed) and its place in prediction, with the model's stain normaliser."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import zarr
from skimage.measure import label

from wsiseg.imaging.instances import min_distance_px, split_mask, split_touching
from wsiseg.imaging.stain import fit_normaliser
from wsiseg.nn.module import load_model
from wsiseg.predict import PredictParams, predict_slide
from wsiseg.report import match_objects
from wsiseg.store.slide import SlideStore


def touching_pairs(
    shape: tuple[int, int], centres: list[tuple[int, int]], radius: int = 9
) -> tuple[np.ndarray, np.ndarray]:
    """(binary mask, object ids): a pair of overlapping discs at each centre (the second ``1.6 * radius`` to the right)."""
    ids = np.zeros(shape, np.int32)
    for k, (y, x) in enumerate(centres):
        cv2.circle(ids, (x, y), radius, 2 * k + 1, -1)
        cv2.circle(ids, (x + int(1.6 * radius), y), radius, 2 * k + 2, -1)
    return (ids > 0).astype(np.uint8), ids


def test_watershed_splits_touching_discs_and_keeps_single_ones():
    binary, truth = touching_pairs((64, 96), [(30, 30)])
    cv2.circle(binary, (80, 12), 6, 1, -1)  # a lone round object
    binary[60, 90] = 1  # a one-pixel speck: no distance peak of its own, still kept
    assert label(binary, connectivity=2).max() == 3
    split = split_touching(binary, min_distance=6)
    assert label(split, connectivity=2).max() == 4  # the pair is two objects, the disc and the speck one each
    assert split[60, 90] == 1 and (split <= binary).all() and split.sum() > 0.95 * binary.sum()  # a thin cut only
    assert match_objects(split[:, :64], truth[:, :64], 0.5, truth_instances=True) == (2, 2, 2)
    assert not split_touching(np.zeros((16, 16), np.uint8), 6).any()


def test_min_distance_is_micrometres_over_pixel_size_else_the_pixel_fallback():
    assert min_distance_px(3.0, 0.25, 7) == 12 and min_distance_px(3.0, 0.5, 7) == 6
    assert min_distance_px(3.0, None, 7) == 7 and min_distance_px(0.01, 1.0, 7) == 1


def test_split_by_bands_equals_splitting_the_whole_mask():
    binary, _ = touching_pairs((200, 80), [(15 + 45 * k, 25) for k in range(4)])
    whole = split_touching(binary, 6)
    store = zarr.open_array(
        zarr.storage.MemoryStore(), mode="w", shape=binary.shape, chunks=(32, 32), dtype=np.uint8, zarr_format=2
    )
    store[:] = binary
    split_mask(store, 6, band=32, margin=40)
    np.testing.assert_array_equal(store[:], whole)  # cuts through exactly symmetric necks too (no ties)
    assert label(whole, connectivity=2).max() == 8


def test_prediction_splits_objects_and_applies_the_models_stain_normaliser(tiny_trained, tmp_path):
    slides, ckpt = tiny_trained
    params = PredictParams(tile=64, overlap=16, min_tissue=0)
    plain = predict_slide(slides["demo_2"], ckpt, tmp_path / "plain.zarr", params)
    split = predict_slide(
        slides["demo_2"],
        ckpt,
        tmp_path / "split.zarr",
        PredictParams(**{**params.__dict__, "split_objects": "watershed", "split_min_distance_um": 2.5}),
    )  # 5 px at the demo's 0.5 um/px
    expected = split_touching(zarr.open_group(plain, mode="r")["labels/mask/0"][:], 5)
    np.testing.assert_array_equal(zarr.open_group(split, mode="r")["labels/mask/0"][:], expected)
    model = load_model(ckpt)
    image = np.asarray(SlideStore(slides["demo_0"]).levels[0][:]).transpose(1, 2, 0)
    model.hparams["stain"] = fit_normaliser(
        "reinhard", [255 - image]
    )  # a deliberately wrong reference: must change the output
    stained = predict_slide(slides["demo_2"], ckpt, tmp_path / "stained.zarr", params, models=[model])
    a, b = (zarr.open_group(p, mode="r")["0"][0].astype(int) for p in (plain, stained))
    assert np.abs(a - b).mean() > 1
    with pytest.raises(ValueError, match="predict.split_objects 'voronoi' is unknown"):
        predict_slide(slides["demo_2"], ckpt, tmp_path / "bad.zarr", PredictParams(split_objects="voronoi"))


def test_an_ensemble_must_share_one_stain_normaliser(tiny_trained, tmp_path):
    """Every member sees the same normalised tiles: members fitted to different stains are refused."""
    import torch

    from wsiseg.predict import load_ensemble

    _, ckpt = tiny_trained
    other = tmp_path / "other.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["hyper_parameters"]["stain"] = {"method": "reinhard", "mean": [50.0, 0.0, 0.0], "std": [10.0, 5.0, 5.0]}
    torch.save(state, other)
    with pytest.raises(ValueError, match="different stain normalisers"):
        load_ensemble([ckpt, other], torch.device("cpu"))
