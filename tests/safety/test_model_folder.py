"""Model folders are written whole and used only as their model cards describe them.

Checkpoints are written through a temporary file beside them (never ``$TMPDIR``), so a full disk leaves no
truncated ``model.ckpt``/``best.ckpt`` and the error names the file; a checkpoint that is not the model its card
describes (other classes or resolution), a card pointing outside its folder and an ensemble of members that
cannot be averaged are one-line errors, found by the dry run where the cards alone show them."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import zarr
from support.patches import TINY, write_store
from support.workflow import TINY_CONFIG, snakemake_command, write_config

import wsiseg.train
from wsiseg.cli import main
from wsiseg.config.checks import plan_problems
from wsiseg.errors import ModelError
from wsiseg.modelcard import CARD, file_sha256, model_problems, resolve_model
from wsiseg.predict import load_ensemble
from wsiseg.train import TrainParams, train_model

CPU = torch.device("cpu")
PARAMS = TrainParams(**TINY)


def no_tmpdir(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # a full $TMPDIR: tempfile names no path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Model folders: ``binary`` (1 class, downscale 2) and ``three`` (3 classes), trained with every
    temporary file of $TMPDIR failing as on a full one."""
    work = tmp_path_factory.mktemp("models")
    folders = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", no_tmpdir)
        for name, classes in (("binary", 1), ("three", 3)):
            train = write_store(work / f"{name}_train.zarr", 16, classes, seed=1)
            val = write_store(work / f"{name}_val.zarr", 8, classes, seed=2)
            loss = {"dice": 1.0, "bce": 1.0} if classes == 1 else {"dice": 1.0, "ce": 1.0}
            train_model([train], [val], work / name, replace(PARAMS, loss=loss), threads=1)
            folders[name] = work / name
    return folders


def copy_model(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to, ignore=shutil.ignore_patterns("lightning"))
    return to


def swap_checkpoint(folder: Path, checkpoint: Path) -> None:
    """Put ``checkpoint`` in ``folder`` as its model.ckpt and record its sha256 in the card, as someone would."""
    shutil.copyfile(checkpoint, folder / "model.ckpt")
    card = json.loads((folder / CARD).read_text())
    card["checkpoints"][0]["sha256"] = file_sha256(folder / "model.ckpt")
    (folder / CARD).write_text(json.dumps(card))


def slide_store(tmp_path: Path) -> Path:
    from wsiseg.convert import convert_slide

    image = tmp_path / "slide.png"
    cv2.imwrite(str(image), np.full((96, 128, 3), 200, np.uint8))
    return convert_slide(image, tmp_path / "slide.zarr", chunk=64)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_checkpoints_never_pass_through_tmpdir(models):
    for folder in models.values():  # trained with $TMPDIR failing: Lightning's writer would have used it
        assert (folder / "model.ckpt").is_file() and (folder / CARD).is_file()
        checkpoints = folder / "lightning" / "checkpoints"
        assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
        assert not leftovers(folder)


def test_a_full_disk_leaves_no_truncated_model_ckpt_and_names_it(tmp_path, monkeypatch):
    train, val = write_store(tmp_path / "t.zarr", 16, seed=1), write_store(tmp_path / "v.zarr", 8, seed=2)
    out = tmp_path / "model"

    def copy_half(source, target):  # the disk fills up half-way through
        Path(target).write_bytes(Path(source).read_bytes()[:1000])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wsiseg.train.shutil, "copyfile", copy_half)
    with pytest.raises(OSError, match=r"No space left on device: '.*model\.ckpt'") as failed:
        train_model([train], [val], out, PARAMS, threads=1)
    assert failed.value.errno == errno.ENOSPC and failed.value.filename == str(out / "model.ckpt")
    assert not (out / "model.ckpt").exists() and not (out / CARD).exists() and not leftovers(out)


def test_a_failed_checkpoint_write_keeps_no_truncated_checkpoint(tmp_path, monkeypatch):
    train, val = write_store(tmp_path / "t.zarr", 16, seed=1), write_store(tmp_path / "v.zarr", 8, seed=2)
    out = tmp_path / "model"

    def write_half(path, data):
        Path(path).write_bytes(bytes(data[:1000]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wsiseg.train, "_write_bytes", write_half)
    with pytest.raises(OSError, match=r"No space left on device: '.*lightning/checkpoints/best\.ckpt'"):
        train_model([train], [val], out, PARAMS, threads=1)
    checkpoints = out / "lightning" / "checkpoints"
    assert not list(checkpoints.iterdir()) and not (out / "model.ckpt").exists()


def test_a_checkpoint_swapped_for_another_classes_model_is_refused(models, tmp_path, capsys):
    folder = copy_model(models["binary"], tmp_path / "swapped")
    swap_checkpoint(folder, models["three"] / "model.ckpt")
    spec = resolve_model(folder)
    spec.provenance(verify=True)  # the sha256 matches: only loading the checkpoint shows what it is
    with pytest.raises(ModelError, match=r"3-class model .* model card .*model\.json describes 1 class"):
        load_ensemble(spec.checkpoints, CPU)
    slide = slide_store(tmp_path)
    assert main(["predict", str(slide), str(tmp_path / "p.zarr"), str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("wsiseg predict: error:") and "3-class model" in err
    assert not (tmp_path / "p.zarr").exists()


def test_a_checkpoint_swapped_for_another_resolution_is_refused(models, tmp_path):
    folder = copy_model(models["binary"], tmp_path / "swapped")
    state = torch.load(folder / "model.ckpt", map_location="cpu", weights_only=True)
    state["hyper_parameters"]["downscale"] = 1.0  # the same network trained on full-resolution patches
    torch.save(state, tmp_path / "ds1.ckpt")
    swap_checkpoint(folder, tmp_path / "ds1.ckpt")
    with pytest.raises(ModelError, match="trained at downscale 1, but its model card .* at downscale 2"):
        load_ensemble(resolve_model(folder).checkpoints, CPU)


def test_a_card_pointing_outside_its_folder_is_refused(models, tmp_path):
    folder = copy_model(models["binary"], tmp_path / "a")
    copy_model(models["binary"], tmp_path / "other")
    card = json.loads((folder / CARD).read_text())
    for outside in ("../other/model.ckpt", str(tmp_path / "other" / "model.ckpt"), "sub/../../other/model.ckpt"):
        card["checkpoints"][0]["path"] = outside
        (folder / CARD).write_text(json.dumps(card))
        with pytest.raises(
            ModelError, match="`predict.model`: .*model.json lists the checkpoint .* outside its folder"
        ):
            resolve_model(folder, key="predict.model")
    card["checkpoints"][0]["path"] = "./sub/../model.ckpt"  # inside, however written
    (folder / CARD).write_text(json.dumps(card))
    assert resolve_model(folder).checkpoints == [folder / "model.ckpt"]


def test_an_ensemble_of_different_classes_is_one_line(models, tmp_path, capsys):
    binary, three = models["binary"], models["three"]
    with pytest.raises(ModelError, match="`predict.model`: the models predict different classes"):
        resolve_model([binary, three], key="predict.model")  # from the cards alone
    with pytest.raises(ModelError, match=r"predict different numbers of classes \[1, 3\]"):
        load_ensemble([binary / "model.ckpt", three / "model.ckpt"], CPU)  # bare checkpoints: when loaded
    slide = slide_store(tmp_path)
    argv = ["predict", str(slide), str(tmp_path / "p.zarr"), str(binary / "model.ckpt"), str(three / "model.ckpt")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("wsiseg predict: error:") and "different numbers of classes" in err


def test_an_ensemble_of_different_resolutions_is_found_from_the_cards(models, tmp_path):
    other = copy_model(models["binary"], tmp_path / "other")
    card = json.loads((other / CARD).read_text())
    card["resolution"]["downscale"] = 4.0
    (other / CARD).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="different resolutions .*downscale 2.*downscale 4"):
        resolve_model([models["binary"], other])


def dry_run_config(model: Path) -> dict:
    return {
        "train": {"arch": "Unet", "encoder": "resnet18", "folds": 0},
        "predict": {"tile": 512, "overlap": 128, "model": str(model)},
        "patches": {"size": 128, "downscale": 2},
    }


def test_the_dry_run_checks_what_the_cards_show(models, tmp_path):
    changed = copy_model(models["binary"], tmp_path / "changed")
    (changed / "model.ckpt").write_bytes((changed / "model.ckpt").read_bytes() + b"x")
    problems = plan_problems(dry_run_config(changed), {"s": "test"}, training=False)
    assert len(problems) == 1 and problems[0].startswith("`predict.model`: ")
    assert "differs from its model card" in problems[0] and str(changed / "model.ckpt") in problems[0]
    assert plan_problems(dry_run_config(models["binary"]), {"s": "test"}, training=False) == []
    assert model_problems([models["binary"], models["three"]])[0].startswith(
        "`predict.model`: the models predict different classes"
    )


def test_snakemake_dry_run_stops_on_a_changed_checkpoint(models, tmp_path):
    changed = copy_model(models["binary"], tmp_path / "changed")
    (changed / "model.ckpt").write_bytes((changed / "model.ckpt").read_bytes()[:-10])
    write_config(tmp_path, {**TINY_CONFIG, "predict": {**TINY_CONFIG["predict"], "model": str(changed)}})
    result = subprocess.run(snakemake_command(tmp_path, "-n", "--cores", "1"), capture_output=True, text=True)
    text = result.stdout + result.stderr
    assert result.returncode != 0 and "`predict.model`: " in text and "differs from its model card" in text


def test_patch_store_classes_are_what_the_models_trained_on(models):
    # the fixture's sanity: the 3-class folder really is a 3-class model
    card = json.loads((models["three"] / CARD).read_text())
    assert card["classes"] == 3
    assert zarr.open_group(models["three"].parent / "three_train.zarr", mode="r").attrs["classes"] == 3
