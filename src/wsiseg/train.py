"""Stage ``train``: fit the segmentation model on patch stores, keep the best checkpoint."""

from __future__ import annotations

import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from .data import PatchDataModule
from .io import atomic_path
from .model import SegmentationModule

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainParams:
    """Model and optimisation settings (all plain values, as in config ``train``)."""

    arch: str = "Unet"
    encoder: str = "resnet18"
    encoder_weights: str | None = None
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] | None = None
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    augment: tuple[str, ...] = ("hflip", "vflip", "rot90")
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int | str = "auto"
    precision: str = "auto"  # auto: 16-mixed on a GPU, 32 on CPU
    seed: int = 0
    extra: dict = field(default_factory=dict)


def _patch_meta(stores: Sequence[str | Path]) -> tuple[float, int]:
    import zarr

    metas = {(float(g.attrs["downscale"]), int(g.attrs["size"])) for g in (zarr.open_group(s, mode="r") for s in stores)}
    if len(metas) != 1:
        raise ValueError(f"patch stores disagree on (downscale, size): {sorted(metas)}")
    return metas.pop()


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
    for col in ("val_dice", "val_iou"):
        if col in metrics:
            ax2.plot(metrics["epoch"], metrics[col], marker="o", label=col)
    ax2.set(xlabel="epoch", ylim=(0, 1), title="Validation")
    ax2.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _epoch_table(csv_log: Path) -> pd.DataFrame:
    raw = pd.read_csv(csv_log)
    keep = [c for c in ("train_loss", "val_loss", "val_dice", "val_iou") if c in raw]
    return raw.groupby("epoch")[keep].mean().reset_index()


def train_model(
    train_patches: Sequence[str | Path],
    val_patches: Sequence[str | Path],
    out_dir: str | Path,
    params: TrainParams = TrainParams(),
    threads: int | None = None,
) -> pd.DataFrame:
    """Train on ``train_patches`` stores, validate on ``val_patches`` (split by slide).

    Writes ``model.ckpt`` (best validation Dice), ``metrics.csv`` (per epoch
    train/val loss, val Dice and IoU) and ``curves.png`` to ``out_dir``.
    Returns the per-epoch table.
    """
    out_dir = Path(out_dir)
    if not train_patches or not val_patches:
        raise ValueError("training needs at least one 'train' and one 'val' slide with masks in the sample sheet")
    if threads:
        torch.set_num_threads(threads)
    pl.seed_everything(params.seed, workers=True, verbose=False)
    downscale, patch_size = _patch_meta(list(train_patches) + list(val_patches))
    data = PatchDataModule(train_patches, val_patches, params.batch_size, params.num_workers, params.augment, params.seed)
    module = SegmentationModule(
        arch=params.arch,
        encoder=params.encoder,
        encoder_weights=params.encoder_weights,
        encoder_depth=params.encoder_depth,
        decoder_channels=list(params.decoder_channels) if params.decoder_channels else None,
        lr=params.lr,
        weight_decay=params.weight_decay,
        dice_weight=params.dice_weight,
        bce_weight=params.bce_weight,
        epochs=params.epochs,
        downscale=downscale,
        patch_size=patch_size,
    )
    work = out_dir / "lightning"
    shutil.rmtree(work, ignore_errors=True)
    checkpoint = ModelCheckpoint(dirpath=work / "checkpoints", monitor="val_dice", mode="max", save_top_k=1, filename="best")
    logger = CSVLogger(work, name="", version="")
    on_gpu = torch.cuda.is_available() and params.accelerator in ("auto", "gpu", "cuda")
    precision = ("16-mixed" if on_gpu else "32") if params.precision == "auto" else params.precision
    devices = int(params.devices) if str(params.devices).isdigit() else params.devices
    trainer = pl.Trainer(
        max_epochs=params.epochs,
        accelerator=params.accelerator,
        devices=devices,
        precision=precision,
        deterministic=not on_gpu,
        callbacks=[checkpoint],
        logger=logger,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        **params.extra,
    )
    log.info("train: %d train / %d val patch stores, %s", len(train_patches), len(val_patches), asdict(params))
    trainer.fit(module, datamodule=data)
    metrics = _epoch_table(Path(logger.log_dir) / "metrics.csv")
    with atomic_path(out_dir / "metrics.csv") as tmp:
        metrics.to_csv(tmp, index=False, float_format="%.5f")
    plot_curves(metrics, out_dir / "curves.png")
    with atomic_path(out_dir / "model.ckpt") as tmp:
        shutil.copyfile(checkpoint.best_model_path, tmp)
    log.info("train: best val_dice %.4f -> %s", float(checkpoint.best_model_score), out_dir / "model.ckpt")
    return metrics
