"""The segmentation LightningModule: an smp model, Dice+BCE loss, Dice/IoU metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import segmentation_models_pytorch as smp
import torch
from torch import nn


def build_network(
    arch: str = "Unet",
    encoder: str = "resnet18",
    encoder_weights: str | None = None,
    encoder_depth: int = 5,
    decoder_channels: Sequence[int] | None = None,
    classes: int = 1,
) -> nn.Module:
    """A segmentation-models-pytorch network from plain config values.

    ``encoder_weights`` (e.g. ``imagenet``) downloads pretrained weights
    through smp; the default ``None`` trains from scratch."""
    kwargs: dict[str, Any] = {"encoder_depth": encoder_depth}
    if decoder_channels is not None:
        kwargs["decoder_channels"] = list(decoder_channels)
    try:
        return smp.create_model(arch, encoder_name=encoder, encoder_weights=encoder_weights, in_channels=3, classes=classes, **kwargs)
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"cannot build smp model arch={arch!r} encoder={encoder!r}: {err}") from None


class SegmentationModule(pl.LightningModule):
    """Binary segmentation with a weighted Dice + BCE loss.

    Hyper-parameters (all plain values) are stored in the checkpoint, so
    :func:`load_model` rebuilds the model, and inference knows the training
    resolution (``downscale``, ``patch_size``), from the checkpoint alone."""

    def __init__(
        self,
        arch: str = "Unet",
        encoder: str = "resnet18",
        encoder_weights: str | None = None,
        encoder_depth: int = 5,
        decoder_channels: list[int] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        epochs: int = 10,
        downscale: float = 1.0,
        patch_size: int = 256,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = build_network(arch, encoder, encoder_weights, encoder_depth, decoder_channels)
        self.dice_loss = smp.losses.DiceLoss(mode="binary", from_logits=True)
        self.bce_loss = nn.BCEWithLogitsLoss()
        self._counts = torch.zeros(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, 1, h, w) for normalised images (n, 3, h, w)."""
        return self.net(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted sum of Dice and BCE losses."""
        h = self.hparams
        return h.dice_weight * self.dice_loss(logits, target) + h.bce_weight * self.bce_loss(logits, target)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._counts = torch.zeros(3, dtype=torch.float64)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss(logits, y), on_epoch=True, prog_bar=True, batch_size=len(x))
        pred = logits > 0
        truth = y > 0.5
        tp = (pred & truth).sum()
        fp = (pred & ~truth).sum()
        fn = (~pred & truth).sum()
        self._counts += torch.stack([tp, fp, fn]).double().cpu()

    def on_validation_epoch_end(self) -> None:
        tp, fp, fn = self._counts.tolist()
        dice = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        iou = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
        self.log("val_dice", dice, prog_bar=True)
        self.log("val_iou", iou)

    def configure_optimizers(self):
        h = self.hparams
        optimizer = torch.optim.AdamW(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, h.epochs))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def load_model(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModule:
    """Rebuild a trained :class:`SegmentationModule` from a checkpoint, loading tensors only.

    Uses ``torch.load(weights_only=True)``: a checkpoint cannot run code."""
    try:
        ckpt = torch.load(checkpoint, map_location=map_location, weights_only=True)
        hparams = dict(ckpt["hyper_parameters"])
    except Exception as err:
        raise ValueError(f"{checkpoint}: not a wsiseg checkpoint ({err})") from None
    hparams["encoder_weights"] = None  # trained weights follow; never download again
    module = SegmentationModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    module.hparams.update(ckpt["hyper_parameters"])
    return module.eval()
