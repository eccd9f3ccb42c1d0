"""Contour-aware segmentation (DCAN): patches carry the annotated objects' contours, a model with
`train.contour_weight` learns them beside the foreground, and `predict.split_objects: contour` separates
touching objects from the predicted contours where the distance transform cannot."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr

torch = pytest.importorskip("torch")

from support.patches import write_store  # noqa: E402

from wsiseg.config.checks import plan_problems  # noqa: E402
from wsiseg.errors import ConfigError  # noqa: E402
from wsiseg.imaging.instances import carve_boundaries, contour_instances, contour_target, split_touching  # noqa: E402
from wsiseg.nn.data import PatchDataset  # noqa: E402
from wsiseg.nn.module import SegmentationModule  # noqa: E402
from wsiseg.report import match_objects  # noqa: E402


def two_glands() -> np.ndarray:
    """Object ids of two 20x80 bars, one above the other: together one 40x80 block, whose distance transform's
    ridge runs along their shared edge (no neck to cut at)."""
    ids = np.zeros((64, 104), np.int32)
    ids[12:32, 12:92] = 1
    ids[32:52, 12:92] = 2
    return ids


def test_contour_target_runs_between_touching_objects():
    contour = contour_target(two_glands(), width=1)
    assert contour[30:34, 50].all()  # across the line where the two objects meet
    assert contour[12, 50] and contour[20, 12]  # the outer edge
    assert not contour[20, 50] and not contour[42, 50] and not contour[0, 0]  # interiors and background


def test_contour_markers_split_touching_objects_the_distance_transform_merges():
    ids = two_glands()
    binary = (ids > 0).astype(np.uint8)
    by_distance = split_touching(binary, min_distance=12)
    by_contour = carve_boundaries(contour_instances(binary, contour_target(ids).astype(np.float32)))
    # true objects, predicted objects, matched pairs at IoU > 0.5
    assert match_objects(by_contour, ids, truth_instances=True) == (2, 2, 2)
    assert match_objects(by_distance, ids, truth_instances=True)[2] < 2  # one flat ridge: no clean cut
    assert by_contour.sum() > 0.97 * binary.sum()  # only the one-pixel cut is lost
    # no predicted contour: one object, as the mask says
    assert match_objects(carve_boundaries(contour_instances(binary, np.zeros(binary.shape))), ids, True)[1] == 1


def test_patches_hold_the_contours_of_instance_label_masks(tmp_path):
    from wsiseg.convert import convert_slide
    from wsiseg.patches import PatchParams, extract_patches

    ids = np.zeros((128, 128), np.uint8)
    ids[20:60, 20:60], ids[20:60, 60:100] = 1, 2  # an instance-label mask image (GlaS, MoNuSeg): touching objects
    image = np.full((128, 128, 3), 200, np.uint8)
    image[ids > 0] = (150, 40, 110)
    tifffile.imwrite(tmp_path / "img.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "mask.tif", ids)
    store = convert_slide(tmp_path / "img.tif", tmp_path / "s.zarr", mask=tmp_path / "mask.tif", chunk=64)
    extract_patches(store, tmp_path / "p.zarr", tmp_path / "p.csv", PatchParams(size=128, downscale=1, stride=128))
    root = zarr.open_group(tmp_path / "p.zarr", mode="r")
    contour, mask = root["contours"][0], root["masks"][0]
    assert contour[40, 58:62].all()  # the two objects' shared edge: only instance ids can tell
    assert not contour[40, 40] and mask[40, 58:62].all()  # the mask itself is one blob there


def test_a_contour_model_learns_both_channels_and_scores_the_foreground(tmp_path):
    store = write_store(tmp_path / "p.zarr", 4)
    x, y = PatchDataset([store], contours=True)[0]
    assert y.shape == (2, 64, 64) and set(torch.unique(y[1]).tolist()) == {0.0, 1.0}
    torch.manual_seed(0)
    model = SegmentationModule(encoder_depth=3, decoder_channels=[16, 8, 4], patch_size=64, contour_weight=1.0)
    batch = torch.stack([x, x]), torch.stack([y, y])
    logits = model(batch[0])
    assert logits.shape == (2, 2, 64, 64)
    loss = model.loss(logits, batch[1])
    loss.backward()
    head = model.net.segmentation_head[0].weight.grad
    assert head[1].abs().sum() > 0  # the contour channel learns
    model.on_validation_epoch_start()
    model.validation_step(batch, 0)
    assert model._counts.shape == (1, 3)  # foreground Dice, as any binary model


def test_contours_need_binary_masks_and_a_contour_model():
    with pytest.raises(ConfigError, match="contour_weight.*binary"):
        SegmentationModule(encoder_depth=3, decoder_channels=[16, 8, 4], patch_size=64, classes=3, contour_weight=1.0)
    config = {
        "train": {"arch": "Unet", "encoder": "resnet18", "contour_weight": 0, "folds": 0},
        "predict": {"overlap": 16, "tile": 64, "split_objects": "contour"},
        "patches": {"size": 64, "classes": 1},
    }
    problems = plan_problems(config, {"a": "train", "b": "val"})
    assert any("split_objects` contour needs a contour-aware model" in p for p in problems)
    config["train"]["contour_weight"], config["patches"]["classes"] = 1.0, 3
    assert any(
        "contour_weight` (1.0) needs binary masks" in p for p in plan_problems(config, {"a": "train", "b": "val"})
    )


def test_predict_splits_objects_with_the_models_contours(tiny_trained, tmp_path):
    from wsiseg.predict import PredictParams, predict_slide

    slides, plain = tiny_trained
    torch.manual_seed(0)
    module = SegmentationModule(
        encoder_depth=3, decoder_channels=[16, 8, 4], downscale=2.0, patch_size=64, contour_weight=1.0
    )
    with torch.no_grad():  # a foreground everywhere and no contour
        head = module.net.segmentation_head[0]
        head.weight.zero_()
        head.bias.copy_(torch.tensor([4.0, -4.0]))
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "c.ckpt")
    params = PredictParams(tile=64, overlap=16, min_tissue=0, split_objects="contour")
    out = predict_slide(slides["demo_2"], tmp_path / "c.ckpt", tmp_path / "c.zarr", params)
    root = zarr.open_group(out, mode="r")
    assert root["0"].shape == (2, 192, 256) and root.attrs["contour_channel"] == 1 and root.attrs["classes"] == 1
    assert [c["label"] for c in root.attrs["omero"]["channels"]] == ["foreground", "contour"]
    mask = root["labels/mask/0"][:]
    assert set(np.unique(mask)) == {1}  # foreground everywhere, no contour: one object, nothing carved
    with pytest.raises(ConfigError, match="contour needs a contour-aware model"):
        predict_slide(slides["demo_2"], plain, tmp_path / "p.zarr", params)


def test_split_mask_reads_the_contour_channel_on_the_model_grid_band_by_band():
    """The contour probability lies on the model's grid (downscale 2 here); bands of the level-0 mask read
    their rows of it upsampled, so a tall slide splits as one window would."""
    from wsiseg.imaging.instances import split_mask
    from wsiseg.predict.stage import contour_rows

    ids = np.zeros((400, 104), np.int32)
    for k, y in enumerate(range(12, 360, 60)):  # six pairs of touching squares down the slide
        ids[y : y + 40, 12:52], ids[y : y + 40, 52:92] = 2 * k + 1, 2 * k + 2
    contour = contour_target(ids)
    prob = zarr.create_array(store={}, shape=(2, 200, 52), dtype="uint8", chunks=(2, 64, 52))
    prob[1] = (contour[::2, ::2] * 255).astype(np.uint8)  # the model grid: every second pixel
    mask = zarr.create_array(store={}, shape=ids.shape, dtype="uint8", chunks=(64, 104))
    mask[:] = (ids > 0).astype(np.uint8)
    split_mask(mask, 12, band=64, margin=32, contour=contour_rows(prob, 2.0, 104))
    assert match_objects(mask[:], ids, truth_instances=True) == (12, 12, 12)


def test_no_object_left_below_min_area_after_a_split(tiny_trained, tmp_path):
    """`predict.min_area` removes the small pieces a split carves too (it runs after the split)."""
    from skimage.measure import label

    from wsiseg.predict import PredictParams, predict_slide

    slides, checkpoint = tiny_trained
    split = dict(tile=64, overlap=16, min_tissue=0, split_objects="watershed", split_min_distance_px=3)
    out = predict_slide(slides["demo_2"], checkpoint, tmp_path / "a.zarr", PredictParams(**split))
    pieces = np.bincount(label(zarr.open_group(out, mode="r")["labels/mask/0"][:], connectivity=2).ravel())[1:]
    assert (pieces < 150).any()  # the split carves small pieces
    out = predict_slide(slides["demo_2"], checkpoint, tmp_path / "b.zarr", PredictParams(**split, min_area=150))
    pieces = np.bincount(label(zarr.open_group(out, mode="r")["labels/mask/0"][:], connectivity=2).ravel())[1:]
    assert len(pieces) and (pieces >= 150).all()
