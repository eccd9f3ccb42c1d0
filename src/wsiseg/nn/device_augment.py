"""Augmentation on the training device: batched, after the uint8 batch is transferred.

On a GPU the loader's per-sample NumPy augmentation is the bottleneck (benchmarks/train_bench.py); with
``train.augment_on: device`` the loader only reads uint8 patches and this module flips, rotates, transposes
and H&E-jitters the whole batch on the device, then normalises it.  The same transforms and distributions as
the loader path (:mod:`wsiseg.nn.augment`): each fires per patch with its probability, ``rot90`` turns by 0-3
quarter turns as albumentations' RandomRotate90 does, and ``hed`` scales and shifts each stain's
concentration after colour deconvolution (:func:`wsiseg.imaging.stain.hed_jitter`, here in float, not
rounded to uint8).  Every draw is a pure function of ``(seed, epoch, rank, batch)``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

from wsiseg.errors import ConfigError
from wsiseg.nn.augment import normalise

DEVICE_OPS = ("hflip", "vflip", "rot90", "transpose", "hed")  # in the loader path's order
DEVICE = 5  # stream tag beside wsiseg.nn.data's AUGMENT, ORDER, MAIN, WORKER
LOG_ADJUST = float(np.log(1e-6))  # skimage.color's rgb2hed / hed2rgb


def device_problems(spec: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """The ``train.augment`` transforms the device path does not have (they need the loader path)."""
    return sorted(name for name, options in normalise(spec).items() if name not in DEVICE_OPS and options["p"])


class DeviceAugment:
    """``train.augment`` (:data:`DEVICE_OPS` only) applied to whole batches on their device."""

    def __init__(self, spec: Mapping[str, Any] | Sequence[str] | None, seed: int = 0):
        missing = device_problems(spec)
        if missing:
            raise ConfigError(
                f"`train.augment_on: device` runs {', '.join(DEVICE_OPS)} on the device; {', '.join(missing)} "
                "need the loader: set `train.augment_on: loader` (or auto)"
            )
        self.ops = {k: v for k, v in normalise(spec).items() if float(v["p"]) > 0}
        self.seed = int(seed)

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, key: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment float RGB ``images`` (n, 3, h, w, 0-255) and their ``targets`` ((n, c, h, w) or (n, h, w)),
        with draws seeded from ``key`` (epoch, rank, batch index)."""
        from wsiseg.nn.data import derive_seed

        generator = torch.Generator().manual_seed(derive_seed(self.seed, DEVICE, *key))
        n = len(images)
        plain = targets.dim() == 3  # class-index targets (n, h, w): give them a channel for the geometry
        targets = targets[:, None] if plain else targets
        for name, options in self.ops.items():
            fire = torch.rand(n, generator=generator) < float(options["p"])
            if name == "hed":
                scale = 1 + float(options.get("alpha", 0.2)) * (2 * torch.rand(n, 3, generator=generator) - 1)
                shift = float(options.get("beta", 0.02)) * (2 * torch.rand(n, 3, generator=generator) - 1)
                if fire.any():
                    idx = fire.nonzero()[:, 0].to(images.device)
                    images[idx] = hed_jitter(images[idx], scale[fire].to(images.device), shift[fire].to(images.device))
                continue
            turns = torch.randint(0, 4, (n,), generator=generator) if name == "rot90" else None
            for k in range(1, 4) if name == "rot90" else (1,):
                chosen = fire & (turns == k) if turns is not None else fire
                if not chosen.any():
                    continue
                idx = chosen.nonzero()[:, 0].to(images.device)
                images[idx], targets[idx] = (_geometry(name, t[idx], k) for t in (images, targets))
        return images, (targets[:, 0] if plain else targets)


def _geometry(name: str, batch: torch.Tensor, turns: int) -> torch.Tensor:
    if name == "hflip":
        return batch.flip(-1)
    if name == "vflip":
        return batch.flip(-2)
    if name == "transpose":
        return batch.transpose(-1, -2)
    return torch.rot90(batch, turns, dims=(-2, -1))


def hed_jitter(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Float RGB ``images`` (n, 3, h, w, 0-255) with each stain's concentration multiplied by ``scale`` and
    shifted by ``shift`` ((n, 3): H, E, DAB), as :func:`wsiseg.imaging.stain.hed_jitter` (skimage's
    rgb2hed / hed2rgb), in float."""
    to_hed = torch.as_tensor(hed_from_rgb, dtype=torch.float32, device=images.device)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=torch.float32, device=images.device)
    rgb = (images / 255).clamp(min=1e-6).permute(0, 2, 3, 1)  # (n, h, w, 3)
    hed = ((torch.log(rgb) / LOG_ADJUST) @ to_hed).clamp(min=0)
    hed = hed * scale[:, None, None, :] + shift[:, None, None, :]
    out = torch.exp(-(hed * -LOG_ADJUST) @ to_rgb).clamp(0, 1)
    return (out * 255).permute(0, 3, 1, 2)
