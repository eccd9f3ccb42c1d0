"""Stage ``train``: fit the segmentation model on patch stores, keep the best checkpoint."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import pytorch_lightning as pl
import torch
import zarr
from pytorch_lightning.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from wsiseg.config.params import RUNTIME_KEYS, UNTRACKED_KEYS, TrainParams
from wsiseg.errors import ConfigError, PatchError, SampleSheetError
from wsiseg.imaging.stain import fit_training_normaliser
from wsiseg.nn.data import MAIN, PatchDataModule, derive_seed, seed_globals
from wsiseg.nn.device_augment import DeviceAugment, device_problems
from wsiseg.nn.module import SegmentationModule
from wsiseg.resolution import SQUARE_TOLERANCE
from wsiseg.utils.io import OutputError, atomic_path, check_disjoint

log = logging.getLogger(__name__)


EPOCH_METRICS = ("train_loss", "val_loss", "val_dice", "val_iou")  # metrics.csv's columns, in order (then val_dice_{c})


def _patch_meta(stores: Sequence[str | Path]) -> tuple[float | None, float | None, int, int]:
    """(downscale, um per patch pixel, patch size, classes) shared by all patch stores.

    Stores cut at one physical pixel size may differ in downscale (slides of
    several scanners): the downscale is then None.  Without a pixel size in
    every store they must agree on the downscale (the um/px is then None)."""
    groups = [zarr.open_group(s, mode="r") for s in stores]
    shapes = {(int(g.attrs["size"]), int(g.attrs.get("classes", 1))) for g in groups}
    if len(shapes) != 1:
        raise PatchError(f"patch stores disagree on (patch size, classes): {sorted(shapes)}")
    downscales = {round(float(g.attrs["downscale"]), 6) for g in groups}
    mpps = [g.attrs.get("patch_mpp") for g in groups]
    mpp = None
    if all(m is not None for m in mpps):
        if max(mpps) > min(mpps) * (1 + SQUARE_TOLERANCE):
            named = {str(s): m for s, m in zip(stores, mpps)}
            raise PatchError(f"patch stores were cut at different pixel sizes (um/px): {named}")
        mpp = round(sum(mpps) / len(mpps), 6)
    elif len(downscales) != 1:
        raise PatchError(
            f"patch stores disagree on the downscale and not all record a pixel size: {sorted(downscales)}"
        )
    size, classes = shapes.pop()
    return (downscales.pop() if len(downscales) == 1 else None), mpp, size, classes


def fingerprint(params: TrainParams, stores: Sequence[str | Path]) -> str:
    """Hash of everything that decides what a run learns: params (minus :data:`RUNTIME_KEYS`) and the patch stores."""
    settings = {k: v for k, v in asdict(params).items() if k not in RUNTIME_KEYS}
    data = [
        (str(Path(s).resolve()), Path(s).stat().st_mtime_ns, zarr.open_group(s, mode="r")["images"].shape[0])
        for s in stores
    ]
    text = json.dumps({"params": settings, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def resume_checkpoint(work: Path, key: str, resume: bool = True, write: bool = True) -> Path | None:
    """``work/checkpoints/last.ckpt`` when an unfinished run with the same fingerprint ``key`` left it.

    Otherwise ``work`` is emptied for a fresh run.  Either way ``key`` is
    recorded in ``work/run.json`` (``complete`` false until the run ends).  ``write`` False (a DDP rank
    other than 0, started once rank 0 has prepared ``work``): only the answer, nothing touched."""
    state_file, last = work / "run.json", work / "checkpoints" / "last.ckpt"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    usable = resume and last.exists() and state.get("fingerprint") == key and not state.get("complete")
    if not write:
        return last if usable else None
    if not usable:
        if work.exists() and any(work.iterdir()) and not state_file.exists():
            raise OutputError(f"{work}: exists and was not written by wsiseg train (no run.json); refusing to empty it")
        if work.exists():
            log.info("train: starting fresh in %s", work)
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"fingerprint": key, "complete": False}))
    return last if usable else None


def _mark_complete(work: Path) -> None:
    """Record in ``work/run.json`` that the run finished (a rerun then starts fresh)."""
    state_file = work / "run.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "complete": True}))


class EpochSeed(Callback):
    """Reseeds the global torch/numpy/python RNGs from ``(seed, epoch)`` when each training epoch starts.

    Whatever draws from them while training (dropout, stochastic depth, a
    random loss term) then continues exactly as in an uninterrupted run when a
    run resumes from an epoch's checkpoint (the data streams are seeded per
    epoch by :class:`~wsiseg.nn.data.EpochSampler`)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        seed_globals(derive_seed(self.seed, trainer.current_epoch, MAIN, 0))


def plot_curves(metrics: pd.DataFrame, out: str | Path) -> None:
    """Loss and validation Dice/IoU per epoch as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for col in ("train_loss", "val_loss"):
        if col in metrics:
            ax1.plot(metrics["epoch"], metrics[col], marker="o", label=col)
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax1.legend()
    for col in [c for c in metrics if c.startswith("val_dice") or c == "val_iou"]:
        if col in metrics:
            ax2.plot(metrics["epoch"], metrics[col], marker="o", label=col)
    ax2.set(xlabel="epoch", ylim=(0, 1), title="Validation")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(
            matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1)
        )  # whole epochs, one run too
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _metric_columns(raw: pd.DataFrame) -> list[str]:
    """The metrics.csv columns present in ``raw``, in order (per-class Dice by class)."""
    per_class = sorted((c for c in raw if re.fullmatch(r"val_dice_\d+", c)), key=lambda c: int(c.rsplit("_", 1)[1]))
    return [c for c in EPOCH_METRICS if c in raw] + per_class


def epoch_table(log_root: Path) -> pd.DataFrame:
    """Per-epoch metrics from every attempt's CSV log under ``log_root`` (``version_N/metrics.csv``).

    When a resumed attempt repeats an epoch, the later attempt's values win."""
    parts = []
    for path in sorted(log_root.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])):
        part = pd.read_csv(path)
        parts.append(part.assign(attempt=len(parts)))
    raw = pd.concat(parts, ignore_index=True)
    raw = raw[raw["attempt"] == raw.groupby("epoch")["attempt"].transform("max")]
    return raw.groupby("epoch")[_metric_columns(raw)].mean().reset_index()


class EpochHistory(Callback):
    """Each finished epoch's metrics, kept in the checkpoint (Lightning saves callback state with it).

    Lightning logs an epoch's training metrics only after that epoch's
    checkpoint is written, and the CSV log is flushed every 100 steps, so a
    run killed right after ``last.ckpt`` would lose them.  Here epoch N's row
    is part of epoch N's checkpoint, and a resumed run's table is complete."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._val: dict[str, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:  # the values sent to the logger (callbacks may alter callback_metrics)
            self._val = {
                k: float(v)
                for k, v in trainer.logged_metrics.items()
                if (k in EPOCH_METRICS and k.startswith("val_")) or re.fullmatch(r"val_dice_\d+", k)
            }

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """Record the epoch (runs before ModelCheckpoint saves it: non-monitoring callbacks go first)."""
        row: dict[str, float] = {"epoch": trainer.current_epoch}
        if "train_loss" in trainer.callback_metrics:  # the epoch mean by now
            row["train_loss"] = float(trainer.callback_metrics["train_loss"])
        row.update(self._val)
        self._val = {}
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]

    def table(self, log_root: Path) -> pd.DataFrame:
        """The per-epoch table; epochs missing from the history (a checkpoint of an older version) come from the CSV logs."""
        frames = [pd.DataFrame(self.rows)] if self.rows else []
        if any(log_root.glob("version_*/metrics.csv")):
            logged = epoch_table(log_root)
            frames.insert(0, logged[~logged["epoch"].isin([r["epoch"] for r in self.rows])])
        raw = pd.concat(frames, ignore_index=True).sort_values("epoch", kind="stable")
        return raw[["epoch", *_metric_columns(raw)]].astype({"epoch": int}).reset_index(drop=True)


def summarise_folds(
    fold_metrics: Sequence[str | Path], out_csv: str | Path, out_png: str | Path, card: str | Path | None = None
) -> pd.DataFrame:
    """Cross-validation summary of per-fold ``metrics.csv`` files (in fold order).

    Writes ``out_csv`` (all folds' epoch rows with a ``fold`` column) and
    ``out_png`` (curves of the mean over folds); with ``card`` (a
    ``model.json`` path) the ensemble's model card listing every fold's
    checkpoint (:func:`wsiseg.modelcard.write_folds_card`).  Returns the table."""
    table = pd.concat([pd.read_csv(path).assign(fold=k) for k, path in enumerate(fold_metrics)], ignore_index=True)
    table = table[["fold", *[c for c in table if c != "fold"]]]
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5f")
    plot_curves(table.drop(columns="fold").groupby("epoch").mean().reset_index(), out_png)
    best = table.groupby("fold")["val_dice"].max()
    log.info("train: %d folds, best val_dice per fold %s, mean %.4f", len(best), best.round(4).tolist(), best.mean())
    if card is not None:
        from wsiseg.modelcard import write_folds_card

        write_folds_card([Path(m).parent for m in fold_metrics], Path(card).parent)
    return table


def _module(
    params: TrainParams,
    downscale: float | None,
    mpp: float | None,
    patch_size: int,
    classes: int,
    stain: dict | None = None,
) -> SegmentationModule:
    """The LightningModule for ``params`` at the patch stores' resolution and class count (``stain``: the fitted normaliser)."""
    return SegmentationModule(
        arch=params.arch,
        encoder=params.encoder,
        encoder_weights=params.encoder_weights,
        encoder_depth=params.encoder_depth,
        decoder_channels=list(params.decoder_channels) if params.decoder_channels else None,
        classes=classes,
        loss=dict(params.loss),
        class_weights=list(params.class_weights) if params.class_weights else None,
        lr=params.lr,
        weight_decay=params.weight_decay,
        scheduler=params.scheduler,
        epochs=params.epochs,
        downscale=downscale,
        mpp=mpp,
        patch_size=patch_size,
        channels_last=params.channels_last,
        compile=params.compile,
        stain=stain,
        freeze_encoder=params.freeze_encoder,
        encoder_kwargs=dict(params.encoder_kwargs) if params.encoder_kwargs else None,
        normalize=dict(params.normalize) if params.normalize else None,
        unfreeze_blocks=params.unfreeze_blocks,
        contour_weight=params.contour_weight,
    )


class EpochLog(Callback):
    """Training progress as plain log lines (for log files, where Lightning's bars would write
    escape codes): every ``interval`` seconds within an epoch, and each epoch's metrics."""

    def __init__(self, interval: float = 30.0):
        self.interval = interval
        self.start = self.last = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = self.last = time.monotonic()

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            log.info(
                "train: epoch %d/%d, batch %d/%d",
                trainer.current_epoch + 1,
                trainer.max_epochs,
                batch_idx + 1,
                trainer.num_training_batches,
            )

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in EPOCH_METRICS}
        text = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        log.info(
            "train: epoch %d/%d done in %.0f s: %s",
            trainer.current_epoch + 1,
            trainer.max_epochs,
            time.monotonic() - self.start,
            text,
        )


def _on_gpu(params: TrainParams) -> bool:
    """Whether Lightning will train on a CUDA GPU."""
    return torch.cuda.is_available() and params.accelerator in ("auto", "gpu", "cuda")


def augment_on_device(params: TrainParams) -> bool:
    """Whether ``train.augment`` runs on the training device (:mod:`wsiseg.nn.device_augment`): ``augment_on:
    device``, or ``auto`` on a GPU when every listed transform has a device version."""
    if params.augment_on == "device":
        return True
    return params.augment_on == "auto" and _on_gpu(params) and not device_problems(params.augment)


def loader_workers(params: TrainParams, threads: int | None = None) -> int:
    """``params.num_workers`` as a count of data-loader processes.

    ``auto``: none on the CPU, where the main process loads many times what training consumes; on a GPU
    one per core of the job but one (``threads``, else the cores this process may use), at most 8: there
    the loader, not training, is the bottleneck, and it delivers more with every worker added
    (``benchmarks/train_bench.py``; benchmarks/README.md, training)."""
    setting = params.num_workers
    if isinstance(setting, int) or str(setting).isdigit():
        return int(setting)
    if setting != "auto":
        raise ConfigError(f"train.num_workers: {setting!r} is neither a number of processes nor 'auto'")
    if not _on_gpu(params):
        return 0
    cores = threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Re-raise an :class:`OSError` that names no file (a full disk: ``[Errno 28] No space left on device``)
    with ``path``, the output being written, so its one-line message says where."""
    try:
        yield
    except OSError as err:
        if err.filename is not None or err.errno is None:
            raise
        raise type(err)(err.errno, err.strerror, str(path)) from err


class SiblingCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files (``last.ckpt``, ``best.ckpt``) written through a temporary file
    beside them, then renamed into place (:func:`~wsiseg.utils.io.atomic_path`).

    Lightning's own writer (an fsspec transaction) writes the file in ``$TMPDIR`` and then moves it:
    a small ``$TMPDIR`` fails with an error that names no path, and across file systems the move is
    a copy that a full disk can leave truncated at the checkpoint's path.  Here a failed write leaves
    the earlier checkpoint as it was and the error names the checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        buffer = io.BytesIO()  # serialised first (as Lightning does): a write error is then an OSError
        torch.save(checkpoint, buffer)
        with naming(path), atomic_path(path) as tmp:
            _write_bytes(tmp, buffer.getbuffer())


def _write_bytes(path: Path, data: memoryview) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename makes it the checkpoint


class TrainingStopped(SIGTERMException):
    """A training run stopped by SIGTERM: exit status 143 (128 + SIGTERM, as a shell reports a process the
    signal ended), so Snakemake and SLURM see a failed job; ``str()`` says where a rerun resumes."""

    def __init__(self, message: str):
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message


def stopped(trainer: pl.Trainer, work: Path) -> TrainingStopped:
    """The :class:`TrainingStopped` of a run stopped by SIGTERM, its one line logged as an error."""
    last = work / "checkpoints" / "last.ckpt"
    where = (
        f"rerun the same command (or Snakemake job) to resume from {last}"
        if last.is_file()
        else f"no epoch had finished, so there is no {last}: a rerun starts over"
    )
    message = f"train: stopped by SIGTERM in epoch {trainer.current_epoch + 1}/{trainer.max_epochs}; {where}"
    log.error(message)
    return TrainingStopped(message)


def _trackers(params: TrainParams, work: Path, config: dict | None) -> list[Any]:
    """``train.logger``'s MLflow or TensorBoard logger (:func:`wsiseg.utils.tracking.tracker`), none for csv;
    it logs the settings (``train`` and the rest of the workflow's ``config``) of the model in ``work.parent``."""
    if params.logger == "csv":
        return []
    from wsiseg.utils.tracking import tracker

    settings = {"train": {k: v for k, v in asdict(params).items() if k not in UNTRACKED_KEYS}}
    settings.update({"config": {k: v for k, v in config.items() if k != "train"}} if config else {})
    leader = rank_zero_only.rank == 0
    return [
        tracker(
            params.logger, params.tracking_uri, params.experiment, work.parent, settings, work / "tracking.json", leader
        )
    ]


def _trainer(params: TrainParams, work: Path, callbacks: list[Callback], config: dict | None = None) -> pl.Trainer:
    """A Lightning Trainer for ``params`` logging to ``work/logs/version_N`` (and to ``train.logger``'s
    tracker: :func:`_trackers`); progress bars on a terminal, plain :class:`EpochLog` lines in log files."""
    bars = sys.stderr.isatty()
    on_gpu = _on_gpu(params)
    precision = ("16-mixed" if on_gpu else "32") if params.precision == "auto" else params.precision
    devices = int(params.devices) if str(params.devices).isdigit() else params.devices
    return pl.Trainer(
        max_epochs=params.epochs,
        accelerator=params.accelerator,
        devices=devices,
        precision=precision,
        deterministic=not on_gpu,
        accumulate_grad_batches=params.accumulate_grad_batches,
        callbacks=[*callbacks, *([] if bars else [EpochLog()])],
        enable_progress_bar=bars,
        logger=[CSVLogger(work, name="logs"), *_trackers(params, work, config)],  # metrics.csv reads the CSV log
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        use_distributed_sampler=False,  # PatchDataModule shards the epoch order itself (EpochSampler)
        **({} if "plugins" in params.extra else {"plugins": [SiblingCheckpointIO()]}),  # train.extra's win
        **params.extra,
    )


def train_model(
    train_patches: Sequence[str | Path],
    val_patches: Sequence[str | Path],
    out_dir: str | Path,
    params: TrainParams = TrainParams(),
    threads: int | None = None,
    callbacks: Sequence[Callback] = (),
    config: dict | None = None,
    class_names: Sequence[str] | None = None,
    class_name: str = "foreground",
) -> pd.DataFrame:
    """Train on ``train_patches`` stores, validate on ``val_patches`` (split by slide).

    Writes ``model.ckpt`` (best validation Dice), ``metrics.csv`` (per epoch
    train/val loss, val Dice and IoU, per-class Dice when multi-class) and
    ``curves.png`` to ``out_dir``.  Lightning's working files live in
    ``out_dir/lightning``; when a run with the same settings and patches was
    interrupted, it continues from ``lightning/checkpoints/last.ckpt``.
    Extra Lightning ``callbacks`` may be given.  Also writes the model card
    ``model.json`` (:func:`wsiseg.modelcard.write_model_card`: the workflow's
    ``config``, None from the CLI; ``class_names``/``class_name`` name the
    classes).  Returns the per-epoch table.
    """
    out_dir = Path(out_dir)
    if not train_patches or not val_patches:
        raise SampleSheetError("training needs at least one 'train' and one 'val' slide with masks in the sample sheet")
    stores = list(train_patches) + list(val_patches)
    check_disjoint(out_dir, stores)
    if threads:
        torch.set_num_threads(threads)
    pl.seed_everything(params.seed, workers=True, verbose=False)
    downscale, mpp, patch_size, classes = _patch_meta(stores)
    stain = fit_training_normaliser(params.stain_normalise, params.stain_reference, train_patches)
    workers = loader_workers(params, threads)
    module = _module(params, downscale, mpp, patch_size, classes, stain)
    normalize = module.hparams["normalize"]  # the encoder's: its weights' own, or train.normalize
    on_device = augment_on_device(params)
    if on_device:  # the loader only reads uint8 patches; the model augments and normalises whole batches
        module.device_augment = DeviceAugment(params.augment, params.seed)
    data = PatchDataModule(
        train_patches,
        val_patches,
        params.batch_size,
        workers,
        params.augment,
        params.seed,
        classes,
        stain,
        normalize,
        contours=params.contour_weight > 0,
        raw=on_device,
    )
    work = out_dir / "lightning"
    # under DDP every rank runs this function; rank 0 alone prepares the working folder and writes the outputs
    leader = rank_zero_only.rank == 0
    resume_from = resume_checkpoint(work, fingerprint(params, stores), params.resume, write=leader)
    checkpoint = ModelCheckpoint(
        dirpath=work / "checkpoints", monitor="val_dice", mode="max", save_top_k=1, save_last=True, filename="best"
    )
    stopping = (
        [EarlyStopping("val_dice", mode="max", patience=params.early_stopping_patience)]
        if params.early_stopping_patience
        else []
    )
    history = EpochHistory()
    trainer = _trainer(params, work, [EpochSeed(params.seed), history, *callbacks, *stopping, checkpoint], config)
    log.info(
        "train: %d train / %d val patch stores, %d class(es), %d loader worker(s), augmentation on the %s, "
        "%d torch thread(s), %s",
        len(train_patches),
        len(val_patches),
        classes,
        workers,
        "device" if on_device else "loader",
        torch.get_num_threads(),  # CPU results are reproducible for one seed at one thread count
        asdict(params),
    )
    if resume_from:
        log.info(
            "train: resuming the interrupted run from %s (epoch %d)",
            resume_from,
            torch.load(resume_from, weights_only=True)["epoch"] + 1,
        )
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    except BaseException as err:
        # SIGTERM (a time limit, `timeout`, a pre-emption): Lightning finishes the batch and raises its
        # SIGTERMException, a SystemExit with status 0, so Snakemake would see a job that succeeded without
        # its outputs.  Any error after a SIGTERM counts too (data-loader workers get the signal as well).
        if isinstance(err, SIGTERMException) or trainer.received_sigterm:
            raise stopped(trainer, work) from err
        raise
    if not trainer.is_global_zero:
        return pd.DataFrame()
    metrics = history.table(work / "logs")
    with naming(out_dir / "metrics.csv"), atomic_path(out_dir / "metrics.csv") as tmp:
        metrics.to_csv(tmp, index=False, float_format="%.5f")
    with naming(out_dir / "curves.png"):
        plot_curves(metrics, out_dir / "curves.png")
    with naming(out_dir / "model.ckpt"), atomic_path(out_dir / "model.ckpt") as tmp:
        shutil.copyfile(checkpoint.best_model_path, tmp)
    from wsiseg.modelcard import write_model_card

    # the torch thread count decides CPU results bit for bit (the config hash does not show it): the card can record it
    hparams = {**dict(module.hparams), "torch_threads": torch.get_num_threads()}
    write_model_card(out_dir, hparams, train_patches, val_patches, metrics, config, class_names, class_name)
    if params.logger != "csv":  # the written model folder to the MLflow run / TensorBoard log
        from wsiseg.utils.tracking import log_outputs

        log_outputs(trainer.loggers[1:], out_dir, float(checkpoint.best_model_score), int(metrics["epoch"].iloc[-1]))
    _mark_complete(work)
    log.info("train: best val_dice %.4f -> %s", float(checkpoint.best_model_score), out_dir / "model.ckpt")
    return metrics
