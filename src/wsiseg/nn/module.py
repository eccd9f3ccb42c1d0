"""The segmentation LightningModule: an smp model, a configurable loss, Dice/IoU metrics."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch

from wsiseg.config.networks import network_of, resolve_network
from wsiseg.config.params import DEFAULT_LOSS, TrainParams
from wsiseg.errors import ConfigError, ModelError
from wsiseg.nn.architectures import build_network
from wsiseg.nn.data import mean_std
from wsiseg.nn.encoders import IMAGENET, freeze, load_encoder_weights, resolve_encoder
from wsiseg.nn.losses import build_loss
from wsiseg.utils.io import check_input_file

SCHEDULERS = ("cosine", "onecycle", "none")
SMP_DEPTHS = {"PSPNet": 3, "DPT": 4}  # smp's encoder_depth default where it is not 5


def confusion(logits: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """(tp, fp, fn) pixel counts per foreground class, shape (max(1, classes - 1), 3).

    Binary (``classes == 1``): logits > 0 against target > 0.5.  Multi-class:
    the arg-max class against the target index, for classes 1..classes-1."""
    if classes == 1:
        pairs = [(logits > 0, target > 0.5)]
    else:
        labels = logits.argmax(1)
        pairs = [(labels == c, target == c) for c in range(1, classes)]
    rows = [torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]) for p, t in pairs]
    return torch.stack(rows).double().cpu()


def dice_iou(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU per row of (tp, fp, fn) counts; 1 where truth and prediction are both empty."""
    tp, fp, fn = counts.unbind(-1)
    union = tp + fp + fn
    dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.ones_like(tp))
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.ones_like(tp))
    return dice, iou


class SegmentationModule(pl.LightningModule):
    """Binary or multi-class segmentation with a configurable weighted loss.

    ``classes == 1`` is binary (one logit channel, sigmoid); ``classes >= 2``
    is multi-class (softmax over ``classes`` channels, class 0 = background).
    Hyper-parameters (all plain values) are stored in the checkpoint, so
    :func:`load_model` rebuilds the model, and inference knows the training
    resolution (``mpp``: um per model pixel, when the slides' pixel size was
    known; ``downscale``: level-0 pixels per model pixel, None when it
    differed between slides; ``patch_size``) and ``classes``, from the
    checkpoint alone; ``stain`` is the fitted stain normaliser
    (:mod:`wsiseg.imaging.stain`) that inference applies to its tiles, None when off.  The encoder's
    settings (:mod:`wsiseg.nn.encoders`) are resolved once, for a new model: ``encoder_build`` (the timm
    architecture and keyword arguments built, so a hub encoder rebuilds without the hub), ``encoder_source``
    (where its weights came from) and ``normalize`` (the input mean/std training and predict use)."""

    def __init__(
        self,
        arch: str = TrainParams.arch,
        encoder: str = TrainParams.encoder,
        encoder_weights: str | None = TrainParams.encoder_weights,
        encoder_depth: int | None = TrainParams.encoder_depth,
        decoder_channels: Sequence[int] | None = TrainParams.decoder_channels,
        classes: int = 1,
        loss: dict[str, float] | None = None,
        class_weights: list[float] | None = None,
        lr: float = TrainParams.lr,
        weight_decay: float = TrainParams.weight_decay,
        scheduler: str = TrainParams.scheduler,
        epochs: int = TrainParams.epochs,
        downscale: float | None = 1.0,
        patch_size: int = 256,
        channels_last: bool = TrainParams.channels_last,
        compile: bool = TrainParams.compile,
        mpp: float | None = None,
        stain: dict[str, Any] | None = None,
        freeze_encoder: bool = TrainParams.freeze_encoder,
        encoder_kwargs: dict[str, Any] | None = None,
        normalize: dict[str, Any] | None = None,
        unfreeze_blocks: int = TrainParams.unfreeze_blocks,
        encoder_build: dict[str, Any] | None = None,
        encoder_source: dict[str, Any] | None = None,
        contour_weight: float = TrainParams.contour_weight,
    ):
        super().__init__()
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"train.scheduler: unknown {scheduler!r}; choose from {list(SCHEDULERS)}")
        self.save_hyperparameters()
        # the patch size is checked with the network, before it is built: before any training
        sizes = {"patches.size": int(patch_size)}
        spec = None
        if contour_weight and classes != 1:
            raise ConfigError(
                f"`train.contour_weight` ({contour_weight}) needs binary masks (a foreground and its objects' "
                f"contours), but the patches have {classes} classes"
            )
        outputs = classes + (1 if contour_weight else 0)  # a contour-aware model: foreground and contour channels
        if encoder_build is None:  # a new model; a checkpoint records what its encoder was built as
            spec = resolve_encoder(encoder, encoder_weights, encoder_kwargs, normalize)
            encoder_build = {"name": spec.name, "kwargs": spec.kwargs}
        self.net = build_network(
            arch,
            encoder_build["name"],
            spec.smp_weights if spec else None,
            encoder_depth,
            decoder_channels,
            outputs,
            encoder_kwargs=encoder_build["kwargs"],
            sizes=sizes,
        )
        if spec is not None and spec.weights_file is not None:
            load_encoder_weights(self.net, spec.weights_file, encoder)
        # what predict and the model card need: the encoder as built, its weights' source and normalisation
        self.hparams["encoder_build"] = encoder_build
        self.hparams["encoder_source"] = spec.source if spec else encoder_source
        self.hparams["normalize"] = spec.normalize if spec else dict(normalize or IMAGENET)
        # the checkpoint records the settings the network was built with, not "the default" (which may change)
        self.hparams["encoder_depth"], self.hparams["decoder_channels"] = resolve_network(
            arch, encoder_depth, decoder_channels
        )
        # no gradients: the encoder's activations are not kept for a backward pass either
        self._learning_blocks = freeze(self.net.encoder, unfreeze_blocks, int(patch_size)) if freeze_encoder else []
        self.criterion = build_loss(loss or DEFAULT_LOSS, classes, class_weights)
        self.contour_criterion = build_loss(DEFAULT_LOSS, 1) if contour_weight else None  # Dice + BCE
        self._counts = torch.zeros(max(1, classes - 1), 3, dtype=torch.float64)

    def setup(self, stage: str) -> None:
        """Apply the speed options (channels_last memory layout, torch.compile) before fitting; under DDP,
        stop the parameters no forward pass uses from requiring gradients (:meth:`freeze_unused`)."""
        if stage == "fit" and self._trainer is not None and self.trainer.world_size > 1:
            self.freeze_unused()
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and stage == "fit":
            self.__dict__["_compiled"] = torch.compile(
                self.net
            )  # not a registered submodule: state_dict keys stay clean

    def freeze_unused(self) -> list[str]:
        """Parameters that take no part in the output (smp keeps a ResNet's last stage at encoder_depth 4, unused)
        stop requiring gradients, which DDP would otherwise wait for; found by one probe forward and backward
        (in eval mode: no batch-norm statistic moves).  Returns their names."""
        was = self.training
        self.eval()
        side = int(self.hparams.patch_size)
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        out = self.net(torch.zeros(1, 3, side, side, device=self.device))
        grads = torch.autograd.grad(out.float().sum(), [p for _, p in named], allow_unused=True)
        unused = [n for (n, p), g in zip(named, grads) if g is None]
        for (n, p), g in zip(named, grads):
            if g is None:
                p.requires_grad_(False)
        self.train(was)
        return unused

    def train(self, mode: bool = True) -> SegmentationModule:
        """Training mode, except a frozen encoder, which keeps its batch-norm statistics and dropout off."""
        super().train(mode)
        if self.hparams.get("freeze_encoder"):
            self.net.encoder.eval()
            for path in getattr(self, "_learning_blocks", []):  # unfrozen blocks train (batch norm, dropout) as usual
                self.net.encoder.get_submodule(path).train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (n, classes, h, w) for normalised images (n, 3, h, w)."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.__dict__.get("_compiled", self.net)(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The configured weighted loss; for a contour-aware model plus ``contour_weight`` x (Dice + BCE) of the
        contour channel."""
        if self.contour_criterion is None:
            return self.criterion(logits, target)
        contour = self.contour_criterion(logits[:, 1:2], target[:, 1:2])
        return self.criterion(logits[:, :1], target[:, :1]) + self.hparams.contour_weight * contour

    def device_batch(self, x: torch.Tensor, y: torch.Tensor, batch_idx: int | None = None):
        """A uint8 (n, h, w, 3) batch from a raw loader as the network takes it: augmented on the device when
        training (``device_augment``, a :class:`~wsiseg.nn.device_augment.DeviceAugment`, keyed by epoch,
        rank and ``batch_idx``), then normalised with the model's mean/std.  Float batches pass unchanged."""
        if x.dtype != torch.uint8:
            return x, y
        x = x.permute(0, 3, 1, 2).float()
        augment = getattr(self, "device_augment", None)
        if augment is not None and batch_idx is not None:
            x, y = augment(x, y, (self.current_epoch, self.global_rank, batch_idx))
        mean, std = (torch.from_numpy(v).to(x.device).view(1, 3, 1, 1) for v in mean_std(self.hparams.get("normalize")))
        return (x - mean) / std, y

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = self.device_batch(*batch, batch_idx)
        loss = self.loss(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._counts = torch.zeros(max(1, self.hparams.classes - 1), 3, dtype=torch.float64)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = self.device_batch(*batch)
        logits = self(x)
        self.log("val_loss", self.loss(logits, y), on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)
        if self.contour_criterion is not None:  # scored on the foreground, as any binary model
            logits, y = logits[:, :1], y[:, :1]
        self._counts += confusion(logits, y, self.hparams.classes)

    def on_validation_epoch_end(self) -> None:
        """Log val_dice/val_iou (mean over foreground classes) and, multi-class, val_dice_{c} per class."""
        counts = self._counts
        if self._trainer is not None and self.trainer.world_size > 1:  # each rank scored its share: sum them
            counts = self.trainer.strategy.reduce(counts.to(self.device), reduce_op="sum").cpu()
        dice, iou = dice_iou(counts)
        self.log("val_dice", dice.mean().item(), prog_bar=True)
        self.log("val_iou", iou.mean().item())
        if self.hparams.classes > 1:
            for c, value in enumerate(dice.tolist(), start=1):
                self.log(f"val_dice_{c}", value)

    def configure_optimizers(self):
        h = self.hparams
        trainable = [p for p in self.parameters() if p.requires_grad]  # a frozen encoder's are left out
        optimizer = torch.optim.AdamW(trainable, lr=h.lr, weight_decay=h.weight_decay)
        if h.scheduler == "none":
            return optimizer
        if h.scheduler == "onecycle":
            steps = max(1, int(self.trainer.estimated_stepping_batches))
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=h.lr, total_steps=steps)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, h.epochs))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def upgrade_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters of older checkpoints in today's form (``dice_weight``/``bce_weight`` → ``loss``)."""
    hparams = dict(hparams)
    # the network of a checkpoint that predates these keys was built with smp's defaults
    found = network_of(hparams.get("arch", "Unet"))
    hparams.setdefault("encoder_depth", SMP_DEPTHS.get(found[0] if found else "", 5))
    hparams.setdefault("decoder_channels", None)
    if found and found[1].takes_channels is None:
        hparams["decoder_channels"] = None  # older wsiseg passed U-Net channels to all; these ignored them
    if "dice_weight" in hparams or "bce_weight" in hparams:
        hparams["loss"] = {"dice": float(hparams.pop("dice_weight", 1.0)), "bce": float(hparams.pop("bce_weight", 1.0))}
    return hparams


def load_model(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> SegmentationModule:
    """Rebuild a trained :class:`SegmentationModule` from a checkpoint, loading tensors only.

    Uses ``torch.load(weights_only=True)``: a checkpoint cannot run code."""
    path = check_input_file(
        checkpoint,
        "checkpoint",
        ModelError,
        missing=FileNotFoundError,
        empty_note=", not a checkpoint (an interrupted copy?)",
    )
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise ModelError(f"{checkpoint}: not a PyTorch checkpoint (starts with {head!r}, not a torch.save zip archive)")
    try:
        ckpt = torch.load(checkpoint, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message is a page of advice on weights_only; the short of it:
        raise ModelError(
            f"{checkpoint}: refused: the file holds Python objects other than tensors, which could run code "
            "when loaded (wsiseg loads tensors only; use a checkpoint written by wsiseg train)"
        ) from None
    except Exception as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ModelError(f"{checkpoint}: not a PyTorch checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ModelError(
            f"{checkpoint}: not a wsiseg checkpoint (no hyper_parameters/state_dict; use a model.ckpt written by wsiseg train)"
        )
    hparams = upgrade_hparams(ckpt["hyper_parameters"])
    hparams["encoder_weights"] = None  # trained weights follow; never download again
    hparams["compile"] = False  # inference code compiles (or not) on its own
    module = SegmentationModule(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    module.hparams.update(ckpt["hyper_parameters"])
    return module.eval()
