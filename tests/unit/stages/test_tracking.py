"""Experiment tracking (train.logger): tiny runs read back with the real MLflow client and TensorBoard's reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from support.patches import TINY, write_store

from wsiseg.config.checks import plan_problems
from wsiseg.errors import ConfigError
from wsiseg.train import TrainParams, train_model
from wsiseg.utils.tracking import INSTALL, locate, tracking_problem

CONFIG = {"seed": 3, "patches": {"size": 64, "downscale": 2}, "train": {"lr": 0.003}}  # as the workflow's card


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[list[Path], list[Path]]:
    work = tmp_path_factory.mktemp("tracked")
    return [write_store(work / "train.zarr", 24, seed=1)], [write_store(work / "val.zarr", 8, seed=2)]


def test_mlflow_run_holds_the_settings_the_epochs_and_the_model_folder(stores, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    out = tmp_path / "results" / "models" / "unet"
    params = TrainParams(**{**TINY, "epochs": 2}, logger="mlflow", experiment="tiny")
    metrics = train_model(*stores, out, params, threads=2, config=CONFIG)

    client = mlflow.MlflowClient(str(tmp_path / "results" / "mlruns"))  # the default: beside the models folder
    [run] = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.run_name == "unet" and run.info.status == "FINISHED"
    assert run.data.tags["wsiseg.model_dir"] == str(out.resolve())
    logged = run.data.params
    assert logged["train/epochs"] == "2" and logged["train/loss/dice"] == "1.0" and logged["train/encoder_depth"] == "3"
    assert logged["config/seed"] == "3" and logged["config/patches/size"] == "64"
    assert "train/num_workers" not in logged and "train/logger" not in logged  # how it ran, not what it learnt
    history = client.get_metric_history(run.info.run_id, "val_dice")
    assert [m.step for m in history] == [0, 1]  # step = epoch
    assert [round(m.value, 5) for m in history] == metrics["val_dice"].round(5).tolist()
    assert {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")} == {0, 1}
    assert run.data.metrics["best_val_dice"] == pytest.approx(metrics["val_dice"].max())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.json", "curves.png", "metrics.csv"} <= artifacts
    card = Path(client.download_artifacts(run.info.run_id, "model.json", str(tmp_path)))
    assert json.loads(card.read_text()) == json.loads((out / "model.json").read_text())
    assert (out / "metrics.csv").exists()  # wsiseg's own CSV log and table as without a tracker
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [0, 1]


def test_tensorboard_log_holds_scalars_per_epoch_the_curves_and_hparams(stores, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    where = tmp_path / "tb"
    params = TrainParams(**{**TINY, "epochs": 2}, logger="tensorboard", tracking_uri=str(where))
    metrics = train_model(*stores, tmp_path / "model", params, threads=2, config=CONFIG)

    [version] = (where / "model").iterdir()
    events = EventAccumulator(str(version), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    val_dice = events.Scalars("val_dice")
    assert [e.step for e in val_dice] == [0, 1]
    assert [round(e.value, 5) for e in val_dice] == metrics["val_dice"].round(5).tolist()
    assert [e.step for e in events.Scalars("train_loss")] == [0, 1]
    assert "epoch" not in events.Tags()["scalars"]  # it is the step
    assert events.Scalars("best_val_dice")[0].value == pytest.approx(metrics["val_dice"].max())
    assert events.Tags()["images"] == ["curves"]
    [image] = events.Images("curves")
    assert (image.step, image.width, image.height) == (1, 900, 350)  # curves.png: 9 x 3.5 in at 100 dpi
    assert "train/epochs" in (version / "hparams.yaml").read_text()


def test_an_interrupted_run_resumes_in_the_same_mlflow_run(stores, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    import pytorch_lightning as pl

    class Interrupt(pl.Callback):
        def on_train_epoch_start(self, trainer, module) -> None:
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt("simulated interruption")

    out, uri = tmp_path / "models" / "unet" / "fold0", str(tmp_path / "store")
    params = TrainParams(**{**TINY, "epochs": 2}, logger="mlflow", tracking_uri=uri)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train_model(*stores, out, params, threads=2, callbacks=[Interrupt()])
    train_model(*stores, out, params, threads=2)

    client = mlflow.MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("wsiseg").experiment_id])
    assert run.info.run_name == "unet/fold0" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")] == [0, 1]


def test_runs_are_named_and_stored_beside_the_models_folder(tmp_path):
    assert locate(tmp_path / "results" / "models" / "unet") == (tmp_path / "results", "unet")
    assert locate(tmp_path / "results" / "models" / "unet" / "fold2") == (tmp_path / "results", "unet/fold2")
    assert locate(tmp_path / "out" / "mine") == (tmp_path / "out", "mine")


def test_a_tracker_that_is_not_installed_is_one_line_before_training(monkeypatch, stores, tmp_path):
    assert tracking_problem("csv") is None
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: its import fails
    line = tracking_problem("mlflow")
    assert line == f"`train.logger` is mlflow, but mlflow is not installed: {INSTALL}"
    assert 'pip install "wsiseg[tracking]"' in line
    config = {
        "train": {"arch": "Unet", "encoder": "resnet18", "logger": "mlflow"},
        "predict": {"tile": 256, "overlap": 64},
        "patches": {"size": 64},
    }
    assert line in plan_problems(config, {"a": "train", "b": "val"})  # the dry run says it
    assert line not in plan_problems(config, {"a": "test"}, training=False)
    with pytest.raises(ConfigError, match=r"wsiseg\[tracking\]"):
        train_model(*stores, tmp_path / "model", TrainParams(**TINY, logger="mlflow"), threads=2)
    assert not (tmp_path / "model" / "model.ckpt").exists()
