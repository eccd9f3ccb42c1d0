"""Training: losses, augmentation, tiny binary/multi-class runs, resume, determinism (seconds on CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from support.patches import SIZE, TINY, synthetic_patches, write_store

from wsiseg.nn.augment import TRANSFORMS, build_augmentation
from wsiseg.nn.losses import LOSSES, build_loss
from wsiseg.nn.module import load_model
from wsiseg.samples.folds import assign_folds, fold_split
from wsiseg.train import TrainParams, train_model


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    work = tmp_path_factory.mktemp("binary")
    return [write_store(work / "train.zarr", 48, seed=1)], [write_store(work / "val.zarr", 16, seed=2)]


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    work = tmp_path_factory.mktemp("multi")
    return [write_store(work / "train.zarr", 48, 3, seed=3)], [write_store(work / "val.zarr", 16, 3, seed=4)]


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_each_loss_builds_and_returns_a_finite_value(name, classes):
    if (name, classes) in {("bce", 3), ("ce", 1)}:
        with pytest.raises(ValueError, match="does not apply"):
            build_loss({name: 1.0}, classes)
        return
    torch.manual_seed(0)
    logits = torch.randn(2, classes, 16, 16, requires_grad=True)
    target = (torch.rand(2, 1, 16, 16) > 0.5).float() if classes == 1 else torch.randint(0, classes, (2, 16, 16))
    loss = build_loss({name: 0.5}, classes, class_weights=[1.0, 2.0, 3.0] if classes == 3 else None)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and torch.isfinite(logits.grad).all()


def test_loss_weights_add_up_and_bad_names_are_rejected():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    dice, bce = build_loss({"dice": 1})(logits, target), build_loss({"bce": 1})(logits, target)
    torch.testing.assert_close(build_loss({"dice": 2, "bce": 0.5})(logits, target), 2 * dice + 0.5 * bce)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss({"dcie": 1})
    with pytest.raises(ValueError, match="class_weights"):
        build_loss({"ce": 1}, 3, class_weights=[1, 2])


def test_augmentation_is_seeded_and_keeps_image_and_mask_aligned():
    images, masks = synthetic_patches(4, 2, seed=0)
    spec = {name: 1.0 for name in ("hflip", "rot90", "affine", "hsv", "brightness_contrast", "blur")}
    runs = [[build_augmentation(spec, seed=7)(image=i, mask=m) for i, m in zip(images, masks)] for _ in range(2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a["image"], b["image"])
    geometric = build_augmentation({"affine": {"p": 1.0, "rotate": [20, 20]}, "rot90": 1.0}, seed=1)
    out = geometric(image=images[0], mask=masks[0])
    dark = out["image"].mean(axis=2) < 190  # the disc pixels, wherever the transform moved them
    assert set(np.unique(out["mask"])) <= {0, 1} and (dark == (out["mask"] == 1)).mean() > 0.97


def test_augmentation_config_errors_name_the_transform():
    assert build_augmentation({"hflip": 0}, 0) is None
    assert build_augmentation(["hflip", "shift_scale_rotate"], 0) is not None
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        build_augmentation({"flip": 0.5}, 0)
    with pytest.raises(ValueError, match="train.augment.blur"):
        build_augmentation({"blur": {"p": 0.5, "sigma": 3}}, 0)
    assert len(TRANSFORMS) >= 9


def test_training_writes_artifacts_and_is_deterministic(binary, tmp_path):
    metrics = train_model(*binary, tmp_path / "a", TrainParams(**TINY, seed=5), threads=2)
    train_model(*binary, tmp_path / "b", TrainParams(**TINY, seed=5), threads=2)
    assert list(metrics.columns) == ["epoch", "train_loss", "val_loss", "val_dice", "val_iou"]
    assert (tmp_path / "a" / "curves.png").stat().st_size > 1000
    a = torch.load(tmp_path / "a" / "model.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "model.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    model = load_model(tmp_path / "a" / "model.ckpt")
    assert model.hparams.downscale == 2 and model.hparams.patch_size == SIZE and model.hparams.classes == 1


def test_binary_training_lowers_the_loss(binary, tmp_path):
    params = TrainParams(
        **{**TINY, "epochs": 3}, loss={"lovasz": 1.0, "focal": 1.0}, augment={"hflip": 0.5, "affine": 0.3, "hsv": 0.3}
    )
    metrics = train_model(*binary, tmp_path, params, threads=2)
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    assert metrics["val_dice"].iloc[-1] > 0.5


def test_multiclass_training_lowers_the_loss_and_logs_dice_per_class(multiclass, tmp_path):
    params = TrainParams(**{**TINY, "epochs": 3}, loss={"ce": 1.0, "dice": 1.0}, class_weights=(0.5, 1.0, 1.0))
    metrics = train_model(*multiclass, tmp_path, params, threads=2)
    assert list(metrics.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_dice",
        "val_iou",
        "val_dice_1",
        "val_dice_2",
    ]
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]
    np.testing.assert_allclose(metrics["val_dice"], metrics[["val_dice_1", "val_dice_2"]].mean(axis=1), atol=1e-4)
    model = load_model(tmp_path / "model.ckpt")
    assert model.hparams.classes == 3
    assert model(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 3, SIZE, SIZE)


class Interrupt(pl.Callback):
    """Stops the run with an error when epoch ``at`` starts (after ``at`` epochs were checkpointed)."""

    def __init__(self, at: int):
        self.at = at

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.at:
            raise KeyboardInterrupt("simulated interruption")


def test_interrupted_run_resumes_from_its_last_checkpoint(binary, tmp_path, caplog):
    params = TrainParams(**{**TINY, "epochs": 3})
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train_model(*binary, tmp_path, params, threads=2, callbacks=[Interrupt(at=2)])
    assert (tmp_path / "lightning" / "checkpoints" / "last.ckpt").exists() and not (tmp_path / "model.ckpt").exists()
    first = pd.read_csv(tmp_path / "lightning" / "logs" / "version_0" / "metrics.csv").dropna(subset=["train_loss"])
    assert first["epoch"].tolist() == [0, 1]
    counter = EpochCounter()
    with caplog.at_level("INFO", logger="wsiseg.train"):
        metrics = train_model(*binary, tmp_path, params, threads=2, callbacks=[counter])
    assert counter.epochs == [2]  # only the missing epoch ran
    assert "resuming the interrupted run" in caplog.text
    assert metrics["epoch"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(metrics["train_loss"].iloc[:2], first["train_loss"], rtol=1e-5)
    assert load_model(tmp_path / "model.ckpt").hparams.patch_size == SIZE


class EpochCounter(pl.Callback):
    """Records which epochs a run trained."""

    def __init__(self):
        self.epochs: list[int] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epochs.append(trainer.current_epoch)


def test_changed_settings_or_finished_runs_start_fresh(binary, tmp_path):
    params = TrainParams(**{**TINY, "epochs": 2})
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train_model(*binary, tmp_path, params, threads=2, callbacks=[Interrupt(at=1)])
    counter = EpochCounter()
    train_model(*binary, tmp_path, TrainParams(**{**TINY, "epochs": 2, "lr": 1e-3}), threads=2, callbacks=[counter])
    assert counter.epochs == [0, 1]  # different lr: the old checkpoint is not reused
    counter = EpochCounter()
    train_model(*binary, tmp_path, TrainParams(**{**TINY, "epochs": 2, "lr": 1e-3}), threads=2, callbacks=[counter])
    assert counter.epochs == [0, 1]  # the previous run had finished: a rerun trains again


class FlatDice(pl.Callback):
    """Pretends validation Dice never improves (what early stopping watches)."""

    def on_validation_end(self, trainer, module) -> None:
        trainer.callback_metrics["val_dice"] = torch.tensor(0.5)


def test_early_stopping_with_onecycle_and_accumulation(binary, tmp_path):
    params = TrainParams(
        **{**TINY, "epochs": 4}, scheduler="onecycle", accumulate_grad_batches=2, early_stopping_patience=2
    )
    metrics = train_model(*binary, tmp_path, params, threads=2, callbacks=[FlatDice()])
    assert len(metrics) == 3  # best at epoch 0, then 2 epochs without improvement


def test_fold_assignment_is_deterministic_balanced_and_groups_by_slide():
    slides = [f"slide_{i}" for i in range(7)]
    folds = assign_folds(slides, 3, seed=4)
    assert folds == assign_folds(list(reversed(slides)), 3, seed=4)  # sheet order does not matter
    assert sorted(np.bincount(list(folds.values()))) == [2, 2, 3]
    assert any(assign_folds(slides, 3, seed=s) != folds for s in range(1, 5))  # the seed shuffles
    vals = []
    for k in range(3):
        train, val = fold_split(slides, 3, k, seed=4)
        assert not set(train) & set(val) and set(train) | set(val) == set(slides)
        assert val == [s for s in slides if folds[s] == k]
        vals += val
    assert sorted(vals) == slides  # every slide validated exactly once
    with pytest.raises(ValueError, match="needs at least 4"):
        assign_folds(slides[:3], 4)


def test_cli_flags_give_the_same_params_as_config():
    from wsiseg.cli import build_parser
    from wsiseg.config.schema import from_args, from_mapping

    args = build_parser().parse_args(
        [
            "train",
            "--train",
            "a.zarr",
            "--val",
            "b.zarr",
            "--out-dir",
            "m",
            "--loss",
            "lovasz",
            "dice=0.5",
            "--augment",
            "hflip=0.3",
            "affine={p: 0.2, rotate: [-10, 10]}",
            "--class-weights",
            "1",
            "2",
            "--scheduler",
            "onecycle",
        ]
    )
    cli = from_args(TrainParams, args, skip=("extra",))
    config = from_mapping(
        TrainParams,
        {
            "loss": {"lovasz": None, "dice": 0.5},
            "augment": {"hflip": 0.3, "affine": {"p": 0.2, "rotate": [-10, 10]}},
            "class_weights": [1, 2],
            "scheduler": "onecycle",
        },
        "train",
    )
    assert cli == config
    assert build_loss(cli.loss).weights == {"lovasz": 1.0, "dice": 0.5}
    assert cli.augment["affine"] == {"p": 0.2, "rotate": [-10, 10]} and cli.epochs == TrainParams().epochs


def test_loader_workers_auto_is_none_on_cpu_and_most_cores_on_a_gpu(monkeypatch):
    """num_workers auto: no worker processes on the CPU (the main process outpaces CPU training); on a GPU
    one per core of the job but one, at most 8; a count is kept (also as the CLI's text); a word is an
    error naming the key."""
    from wsiseg.train import loader_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loader_workers(TrainParams(), threads=16) == 0
    assert loader_workers(TrainParams(num_workers=3), threads=16) == 3
    assert loader_workers(TrainParams(num_workers="2")) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert loader_workers(TrainParams(), threads=4) == 3
    assert loader_workers(TrainParams(), threads=32) == 8
    assert loader_workers(TrainParams(), threads=1) == 0
    assert loader_workers(TrainParams(accelerator="cpu"), threads=16) == 0
    assert loader_workers(TrainParams(num_workers=0), threads=16) == 0
    with pytest.raises(ValueError, match="train.num_workers.*'many'"):
        loader_workers(TrainParams(num_workers="many"))
