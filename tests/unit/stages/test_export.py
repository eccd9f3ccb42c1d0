"""Stage export: TorchScript and ONNX networks that equal the checkpoint, run without wsiseg and in predict."""

import json
import shutil

import numpy as np
import onnxruntime
import pytest
import torch
import zarr

from wsiseg.cli import main
from wsiseg.errors import ModelError
from wsiseg.export import TOLERANCE, export_model, load_exported
from wsiseg.modelcard import file_sha256, read_model_card, resolve_model
from wsiseg.nn.module import load_model
from wsiseg.predict import PredictParams, predict_slide

# batch, height, width other than the export's example (2 x 64 x 64) and the export check's
SHAPES = [(3, 3, 96, 160), (1, 3, 64, 64)]


@pytest.fixture(scope="module")
def exported(tiny_trained, tmp_path_factory) -> dict:
    """The tiny trained model exported both ways: ONNX by the function, TorchScript by the CLI."""
    _, ckpt = tiny_trained
    work = tmp_path_factory.mktemp("export")
    onnx_dir = export_model(ckpt.parent, work / "onnx", "onnx")
    assert main(["export", str(ckpt.parent), "--format", "torchscript", "--out", str(work / "ts")]) == 0
    return {"onnx": onnx_dir, "torchscript": work / "ts"}


def _checkpoint_logits(ckpt, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return load_model(ckpt)(x).numpy()


def test_onnx_model_in_onnxruntime_equals_the_checkpoint(tiny_trained, exported):
    _, ckpt = tiny_trained
    card = read_model_card(exported["onnx"])
    export = card["export"]
    assert export["format"] == "onnx" and export["file"] == "model.onnx" and export["opset"] == 18
    assert export["sha256"] == file_sha256(exported["onnx"] / "model.onnx")
    assert card["checkpoints"] == [{"path": "model.onnx", "sha256": export["sha256"]}]
    assert export["source"]["sha256"] == file_sha256(ckpt)
    assert export["input"] == "float32 NCHW normalised RGB" and export["output"] == "logits"
    assert export["normalize"] == load_model(ckpt).hparams["normalize"]
    assert export["dynamic"] == ["batch", "height", "width"]
    assert 0 <= export["max_abs_difference"] <= export["tolerance"] == TOLERANCE
    # a collaborator's way: onnxruntime alone, batch, height and width of their choice
    session = onnxruntime.InferenceSession(str(exported["onnx"] / "model.onnx"), providers=["CPUExecutionProvider"])
    noise = torch.Generator().manual_seed(5)
    for shape in SHAPES:
        x = torch.randn(shape, generator=noise)
        (got,) = session.run(None, {"input": x.numpy()})
        np.testing.assert_allclose(got, _checkpoint_logits(ckpt, x), rtol=0, atol=TOLERANCE)


def test_torchscript_model_from_jit_load_equals_the_checkpoint(tiny_trained, exported, capsys):
    _, ckpt = tiny_trained
    export = read_model_card(exported["torchscript"])["export"]
    assert export["format"] == "torchscript" and export["file"] == "model.pt" and export["opset"] is None
    assert export["max_abs_difference"] <= TOLERANCE
    network = torch.jit.load(str(exported["torchscript"] / "model.pt"))
    noise = torch.Generator().manual_seed(6)
    for shape in SHAPES:
        x = torch.randn(shape, generator=noise)
        with torch.inference_mode():
            np.testing.assert_allclose(network(x).numpy(), _checkpoint_logits(ckpt, x), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_predict_with_the_exported_folder_equals_the_checkpoint(tiny_trained, exported, format, tmp_path):
    slides, ckpt = tiny_trained
    params = PredictParams(tile=64, overlap=16, min_tissue=0, chunk=128)
    stores = {
        name: zarr.open_group(predict_slide(slides["demo_2"], model, tmp_path / f"{name}.zarr", params), mode="r")
        for name, model in (("checkpoint", ckpt.parent), ("exported", exported[format]))
    }
    a, b = stores["checkpoint"], stores["exported"]
    # probabilities (x 255, uint8) within one rounding step, the same masks
    assert np.abs(a["0"][:].astype(int) - b["0"][:].astype(int)).max() <= 1
    np.testing.assert_array_equal(a["labels/mask/0"][:], b["labels/mask/0"][:])
    assert 0 < a["labels/mask/0"][:].mean() < 1
    file = exported[format] / read_model_card(exported[format])["export"]["file"]
    assert b.attrs["provenance"]["checkpoints"] == [{"path": str(file), "sha256": file_sha256(file)}]


def test_exported_network_loads_only_with_its_card(exported, tmp_path):
    assert load_exported(exported["onnx"] / "model.onnx").hparams["classes"] == 1
    shutil.copy(exported["onnx"] / "model.onnx", tmp_path / "model.onnx")
    with pytest.raises(ModelError, match="model.json"):
        load_exported(tmp_path / "model.onnx")
    assert resolve_model(exported["torchscript"]).checkpoints == [exported["torchscript"] / "model.pt"]


def test_export_that_differs_from_the_checkpoint_writes_nothing(tiny_trained, monkeypatch, tmp_path, capsys):
    import wsiseg.export

    _, ckpt = tiny_trained
    monkeypatch.setattr(wsiseg.export, "max_difference", lambda *args: 0.25)
    out = tmp_path / "ts"
    assert main(["export", str(ckpt.parent), "--format", "torchscript", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsiseg export: error:") and "0.25" in err and "\n" not in err
    assert not out.exists()


def test_export_refuses_an_exported_folder_and_a_bare_checkpoint(tiny_trained, exported, tmp_path):
    _, ckpt = tiny_trained
    with pytest.raises(ModelError, match="already an exported model"):
        export_model(exported["onnx"], tmp_path / "again")
    with pytest.raises(ModelError, match="not a model folder"):
        export_model(ckpt, tmp_path / "bare")
    assert json.loads((ckpt.parent / "model.json").read_text()).get("export") is None  # the source is untouched
