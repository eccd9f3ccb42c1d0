"""Experiment trackers beside wsiseg's own CSV log (config ``train.logger``): MLflow or TensorBoard.

The run logs its settings when it starts, each epoch's metrics (step = epoch, so runs of any batch size or
patch count line up) and, when the model folder is written, ``curves.png`` and the model card.  The
trackers are Lightning's loggers; importing this module imports neither them nor Lightning (the dry-run
checks use :func:`tracking_problem`), :func:`tracker` does when the train stage builds one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

from wsiseg.errors import ConfigError

log = logging.getLogger(__name__)

TRACKERS = {"mlflow": "mlflow", "tensorboard": "tensorboard"}
"""``train.logger`` values that add a tracker -> the module it needs (``csv`` adds none)."""
INSTALL = 'pip install "wsiseg[tracking]"'
ARTIFACTS = ("model.json", "curves.png", "metrics.csv")
"""Files of the model folder an MLflow run keeps as artifacts."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (blocked)
        return False


def tracking_problem(logger: str) -> str | None:
    """One line when ``train.logger`` names a tracker that is not installed, else None."""
    module = TRACKERS.get(logger)
    if module is None or _installed(module):
        return None
    return f"`train.logger` is {logger}, but {module} is not installed: {INSTALL}"


def locate(out_dir: str | Path) -> tuple[Path, str]:
    """(results folder, run name) of model folder ``out_dir``: ``<results>/models/<name>[/fold<k>]`` gives
    ``(<results>, "<name>[/fold<k>]")``; any other folder, its parent and its name."""
    out_dir = Path(out_dir).resolve()
    for parent in list(out_dir.parents)[:2]:
        if parent.name == "models":
            return parent.parent, out_dir.relative_to(parent).as_posix()
    return out_dir.parent, out_dir.name


def default_uri(logger: str, out_dir: str | Path) -> str:
    """Where ``logger`` writes when ``train.tracking_uri`` is null: ``<results>/mlruns`` (an MLflow file
    store) or ``<results>/tensorboard``, beside the models folder."""
    results, _ = locate(out_dir)
    return str(results / ("mlruns" if logger == "mlflow" else "tensorboard"))


def _flat(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``settings`` as one level of ``a/b/c`` keys (characters MLflow refuses in a name become ``_``)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = prefix + re.sub(r"[^\w\-./ ]", "_", str(key))
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, name + "/"))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _by_epoch(cls: type) -> type:
    """Lightning logger class ``cls`` logging each metric at step = epoch (Lightning's step is the
    optimiser step, which differs between runs of another batch size, patch count or device count)."""

    class ByEpoch(cls):  # type: ignore[misc, valid-type]
        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            metrics = dict(metrics)
            epoch = metrics.pop("epoch", None)
            super().log_metrics(metrics, int(epoch) if epoch is not None else step)

    ByEpoch.__name__ = ByEpoch.__qualname__ = cls.__name__
    return ByEpoch


def tracker(
    logger: str,
    tracking_uri: str | None,
    experiment: str,
    out_dir: str | Path,
    settings: Mapping[str, Any],
    state_file: str | Path,
    write: bool = True,
) -> Any:
    """The Lightning logger of ``train.logger`` (``mlflow`` or ``tensorboard``) for model folder ``out_dir``,
    with ``settings`` (nested plain values) logged as its parameters.

    Raises :class:`~wsiseg.errors.ConfigError` when the tracker is not installed.  The run is named after
    the model folder (:func:`locate`).  ``state_file`` records which run it is: an interrupted run that
    resumes (its working folder, and so ``state_file``, kept) goes on in the same MLflow run or TensorBoard
    version.  ``write`` False (a DDP rank other than 0): nothing written."""
    problem = tracking_problem(logger)
    if problem:
        raise ConfigError(problem)
    state_file, out_dir = Path(state_file), Path(out_dir)
    _, name = locate(out_dir)
    where = tracking_uri or default_uri(logger, out_dir)
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    same = state.get("logger") == logger and state.get("where") == where and state.get("experiment") == experiment
    previous = state.get("run") if same else None
    if logger == "mlflow":
        from pytorch_lightning.loggers import MLFlowLogger

        if urlparse(where).scheme in ("", "file") or re.match(r"[A-Za-z]:[\\/]", where):
            # MLflow 3 keeps its file store (a plain folder, nothing to set up) only on request
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        made = _by_epoch(MLFlowLogger)(
            experiment_name=experiment,
            run_name=name,
            tracking_uri=where,
            tags={"wsiseg.model_dir": str(out_dir.resolve())},
            run_id=previous,
        )
        run = made.run_id  # creates the experiment and the run (rank 0; None on the others)
    elif logger == "tensorboard":
        from pytorch_lightning.loggers import TensorBoardLogger

        made = _by_epoch(TensorBoardLogger)(where, name=name, version=previous, default_hp_metric=False)
        run = made.version
    else:
        raise ConfigError(f"`train.logger` is {logger!r}: choose csv, {' or '.join(TRACKERS)}")
    if write:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"logger": logger, "where": where, "experiment": experiment, "run": run}))
    # a resumed MLflow run has them already (MLflow refuses a parameter's new value: `devices` may differ)
    if previous is None or logger == "tensorboard":
        made.log_hyperparams(_flat(settings))
    log.info("train: logging to %s %s (run %s)", logger, where, run)
    return made


def log_outputs(loggers: Sequence[Any], out_dir: str | Path, best: float, epoch: int) -> None:
    """Send the finished model folder ``out_dir`` to the trackers among ``loggers``: MLflow gets
    :data:`ARTIFACTS` and ``best_val_dice``; TensorBoard ``curves.png`` as an image and its parameters
    with ``best_val_dice`` (its HParams view).  A tracker that fails here only warns: the model is written."""
    from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger

    out_dir = Path(out_dir)
    for made in loggers:
        try:
            if isinstance(made, MLFlowLogger):
                client, run = made.experiment, made.run_id
                client.log_metric(run, "best_val_dice", best, step=epoch)
                for name in ARTIFACTS:
                    if (out_dir / name).is_file():
                        client.log_artifact(run, str(out_dir / name))
            elif isinstance(made, TensorBoardLogger):
                from matplotlib.image import imread

                writer = made.experiment
                curves = imread(out_dir / "curves.png")[..., :3]  # floats in [0, 1], alpha left out
                writer.add_image("curves", curves, epoch, dataformats="HWC")
                made.log_hyperparams(dict(made.hparams), {"best_val_dice": best}, step=epoch)
                writer.close()  # Lightning closed it after fit; writing reopened it
        except Exception as err:  # noqa: BLE001 - a tracking server's failure must not fail a finished training
            log.warning("train: could not log the model folder to %s: %s", type(made).__name__, err, exc_info=True)
