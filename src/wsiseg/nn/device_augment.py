"""Augmentation on the training device: batched, after the uint8 batch is transferred.

On a GPU the loader's per-sample NumPy augmentation is the bottleneck (benchmarks/train_bench.py); with
``train.augment_on: device`` the loader only reads uint8 patches and this module flips, rotates, transposes,
H&E-jitters, brightens and blurs the whole batch on the device, then normalises it.  The same transforms and
distributions as the loader path (:mod:`wsiseg.nn.augment`, albumentations' defaults and keyword arguments):
each fires per patch with its probability, ``rot90`` turns by 0-3 quarter turns as RandomRotate90 does,
``hed`` scales and shifts each stain's concentration after colour deconvolution
(:func:`wsiseg.imaging.stain.hed_jitter`), ``brightness_contrast`` is ``x * (1 + c) + b * 255`` with ``c``,
``b`` uniform in the limits, ``blur`` a Gaussian of sigma uniform in ``sigma_limit`` and an odd kernel size
from ``blur_limit`` (reflected borders), all in float, not rounded to uint8.  Every draw is a pure function of
``(seed, epoch, rank, batch)``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

from wsiseg.errors import ConfigError
from wsiseg.nn.augment import normalise

DEVICE_OPS = ("hflip", "vflip", "rot90", "transpose", "hed", "brightness_contrast", "blur")
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
            if name in ("brightness_contrast", "blur"):
                values = _colour_draws(name, options, n, generator)
                if fire.any():
                    idx = fire.nonzero()[:, 0].to(images.device)
                    apply = _brightness_contrast if name == "brightness_contrast" else _blur
                    images[idx] = apply(images[idx], *(v[fire].to(images.device) for v in values))
                continue
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


def _limits(value: Any, default: tuple[float, float]) -> tuple[float, float]:
    """albumentations' range argument: a number ``v`` is (-v, v), a pair is itself."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return (-float(value), float(value))
    return (float(value[0]), float(value[1]))


def _uniform(low: float, high: float, n: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _colour_draws(name: str, options: Mapping[str, Any], n: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Per-patch parameters of a colour transform: (contrast factor, brightness offset) or (sigma, kernel size)."""
    if name == "brightness_contrast":
        contrast = _limits(options.get("contrast_limit"), (-0.2, 0.2))
        brightness = _limits(options.get("brightness_limit"), (-0.2, 0.2))
        return [1 + _uniform(*contrast, n, generator), 255 * _uniform(*brightness, n, generator)]
    sigma = options.get("sigma_limit", (0.5, 3.0))
    sigma = (float(sigma), float(sigma)) if isinstance(sigma, (int, float)) else tuple(map(float, sigma))
    size = options.get("blur_limit", (3, 5))
    size = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(map(int, size))
    ksize = torch.randint(size[0], size[1] + 1, (n,), generator=generator)
    return [_uniform(*sigma, n, generator), ksize + (ksize % 2 == 0)]  # an even size grows by one, as albumentations


def _brightness_contrast(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return (images * alpha.view(-1, 1, 1, 1) + beta.view(-1, 1, 1, 1)).clamp(0, 255)


def _blur(images: torch.Tensor, sigma: torch.Tensor, ksize: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one kernel per patch (the largest size; smaller kernels padded with zeros)."""
    n, c, h, w = images.shape
    radius = int(ksize.max()) // 2
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (x[None] / sigma[:, None].to(images.dtype)) ** 2)
    kernel = kernel * (x[None].abs() <= (ksize[:, None] // 2)).to(images.dtype)  # each patch's own size
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n * c, size)
    flat = torch.nn.functional.pad(images.reshape(1, n * c, h, w), (radius,) * 4, mode="reflect")
    flat = torch.nn.functional.conv2d(flat, kernel[:, None, :, None], groups=n * c)
    flat = torch.nn.functional.conv2d(flat, kernel[:, None, None, :], groups=n * c)
    return flat.reshape(n, c, h, w)


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
