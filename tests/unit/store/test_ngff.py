"""Outputs that viewers open: slide and prediction stores as OME-NGFF that ome-zarr-models validates,
ome-zarr-py reads and napari-ome-zarr turns into overlaying image and labels layers; model folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from wsiseg.convert import convert_slide
from wsiseg.modelcard import CARD, ModelError, file_sha256, resolve_model, wsiseg_version
from wsiseg.predict import PredictParams, predict_slide
from wsiseg.store.prediction import Prediction

PARAMS = PredictParams(tile=64, overlap=16, chunk=128)


def napari_layers(path) -> list[tuple[list, dict, str]]:
    """The layers napari-ome-zarr's reader makes of a store (no viewer needed): (data, metadata, kind)."""
    pytest.importorskip("napari_ome_zarr")
    from napari_ome_zarr._reader import napari_get_reader

    return napari_get_reader(str(path))()


def spatial(data: list, meta: dict) -> list[tuple[int, ...]]:
    """Per-level shapes of a layer as napari shows it: without the channel axis images are split on."""
    axis = meta.get("channel_axis")
    return [tuple(s for i, s in enumerate(d.shape) if i != axis) for d in data]


@pytest.fixture
def annotated_slide(rgb_tiff, tmp_path):
    path, _ = rgb_tiff
    (tmp_path / "a.json").write_text(
        json.dumps([{"geometry": {"type": "Polygon", "coordinates": [[[5, 5], [50, 5], [50, 40], [5, 5]]]}}])
    )
    return convert_slide(path, tmp_path / "s.zarr", mask=tmp_path / "a.json", chunk=128)


def test_slide_labels_are_a_2d_labels_layer_over_the_image(annotated_slide):
    layers = napari_layers(annotated_slide)
    (image, image_meta, _), *labels = layers
    assert [kind for *_, kind in layers] == ["image", "labels", "labels"]  # image, mask, instances
    data, meta, _ = labels[0]
    assert data[0].ndim == 2 and spatial(data, meta) == spatial(image, image_meta)[: len(data)]
    assert meta["scale"] == image_meta["scale"] == [1.0, 1.0]
    assert zarr.open_group(annotated_slide, mode="r")["labels/mask"].attrs["multiscales"][0]["axes"][0]["name"] == "y"


@pytest.fixture(scope="module")
def prediction(tiny_trained, tmp_path_factory):
    slides, ckpt = tiny_trained
    out = tmp_path_factory.mktemp("ngff") / "p.zarr"
    return (
        predict_slide(slides["demo_2"], ckpt.parent, out, PARAMS, class_name="glomerulus", config_hash="abc123"),
        slides["demo_2"],
        ckpt,
    )


def test_prediction_store_validates_as_ome_ngff_image_with_labels(prediction):
    from ome_zarr_models.v04.image import Image
    from ome_zarr_models.v04.image_label import ImageLabel

    out, _, _ = prediction
    root = zarr.open_group(out, mode="r")
    image = Image.from_zarr(root)
    assert [a.name for a in image.attributes.multiscales[0].axes] == ["c", "y", "x"]
    assert len(image.attributes.omero.channels) == 1
    assert [c["label"] for c in root.attrs["omero"]["channels"]] == ["glomerulus"]
    label = ImageLabel.from_zarr(root["labels/mask"])
    assert [a.name for a in label.attributes.multiscales[0].axes] == ["y", "x"]
    meta = root["labels/mask"].attrs["image-label"]
    assert {p["label-value"]: p["class"] for p in meta["properties"]} == {0: "background", 1: "glomerulus"}
    assert {c["label-value"] for c in meta["colors"]} == {0, 1}
    assert root["labels"].attrs["labels"] == ["mask"]


def test_ome_zarr_reader_returns_an_image_and_a_label_node(prediction):
    from ome_zarr import io, reader

    out, _, _ = prediction
    nodes = list(reader.Reader(io.parse_url(str(out)))())
    images = [n for n in nodes if n.load(reader.Multiscales) and not n.load(reader.Label)]
    labels = [n for n in nodes if n.load(reader.Label)]
    assert len(images) == 1 and len(labels) == 1
    assert images[0].data[0].shape == (1, 192, 256) and labels[0].data[0].shape == (
        384,
        512,
    )  # probabilities: the model's grid


def test_napari_overlays_prediction_layers_on_the_slide(prediction):
    out, slide, _ = prediction
    (slide_image, slide_meta, _), (truth, truth_meta, _) = napari_layers(slide)[:2]
    layers = napari_layers(out)
    assert [kind for *_, kind in layers] == ["image", "labels"]
    (prob, prob_meta, _), (mask, mask_meta, _) = layers
    assert spatial(mask, mask_meta) == spatial(slide_image, slide_meta) == spatial(truth, truth_meta)
    assert mask_meta["scale"] == slide_meta["scale"] == truth_meta["scale"]
    # the probabilities are on the downscale-2 model's grid: twice the pixel size, the same extent on the slide
    assert list(prob_meta["scale"][-2:]) == [2 * v for v in slide_meta["scale"][-2:]]
    extent = [s * k for s, k in zip(spatial(prob, prob_meta)[0], prob_meta["scale"][-2:])]
    assert extent == [s * k for s, k in zip(spatial(slide_image, slide_meta)[0], slide_meta["scale"][-2:])]
    assert mask_meta["properties"]["class"] == ["background", "glomerulus"]
    assert set(np.unique(np.asarray(mask[0]))) <= {0, 1}


def test_prediction_records_model_config_and_version(prediction):
    out, _, ckpt = prediction
    made = Prediction(out).provenance
    assert made["checkpoints"] == [{"path": str(ckpt), "sha256": file_sha256(ckpt)}]
    assert made["model_cards"][0]["path"] == str(ckpt.parent / CARD)
    assert made["config_hash"] == "abc123" and made["wsiseg_version"] == wsiseg_version()


def test_training_writes_a_model_card(tiny_trained):
    _, ckpt = tiny_trained
    card = json.loads((ckpt.parent / CARD).read_text())
    assert card["architecture"]["arch"] == "Unet" and card["architecture"]["encoder"] == "resnet18"
    assert card["classes"] == 1 and card["class_names"] == ["background", "foreground"]
    assert card["resolution"]["downscale"] == 2 and card["patch_size"] == 64
    assert card["slides"] == {"train": ["demo_0"], "val": ["demo_1"]}
    assert 0 <= card["metrics"]["val_dice"] <= 1 and card["metrics"]["epochs"] == 2
    assert card["config"] is None and card["config_hash"] is None and card["wsiseg_version"] == wsiseg_version()
    assert card["checkpoints"] == [{"path": "model.ckpt", "sha256": file_sha256(ckpt)}]


def test_model_folder_predicts_like_its_checkpoint(prediction, tmp_path):
    out, slide, ckpt = prediction
    direct = predict_slide(slide, ckpt, tmp_path / "d.zarr", PARAMS, class_name="glomerulus")
    a, b = (zarr.open_group(p, mode="r")["labels/mask/0"][:] for p in (out, direct))
    np.testing.assert_array_equal(a, b)


def test_bad_model_paths_name_the_path(tiny_trained, tmp_path):
    _, ckpt = tiny_trained
    with pytest.raises(ModelError, match="`predict.model`: .*nowhere does not exist"):
        resolve_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="without model.json"):
        resolve_model(tmp_path / "empty")
    copy = tmp_path / "copy"
    shutil.copytree(ckpt.parent, copy, ignore=shutil.ignore_patterns("lightning"))
    (copy / "model.ckpt").write_bytes((copy / "model.ckpt").read_bytes() + b"x")
    with pytest.raises(ModelError, match="differs from its model card"):
        resolve_model(copy).provenance()
    assert resolve_model([ckpt, ckpt.parent]).checkpoints == [ckpt, ckpt]


def test_info_gives_a_prediction_store_the_slide_size_and_its_probability_grid(prediction, capsys):
    from wsiseg.cli import main

    out, _, _ = prediction
    assert main(["info", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    info = info[0] if isinstance(info, list) else info
    assert (info["width"], info["height"]) == (512, 384)  # the slide's level 0, not the probabilities' grid
    assert info["prob_downscale"] == 2.0 and info["levels"][0] == [1, 192, 256]
