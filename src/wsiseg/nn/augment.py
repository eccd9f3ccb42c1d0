"""On-the-fly albumentations pipelines from config.

Config form (``train.augment``), name -> probability, or name -> mapping with
``p`` plus keyword arguments for the albumentations transform::

    augment:
      hflip: 0.5
      vflip: 0.5
      rot90: 0.5
      affine: {p: 0.3, rotate: [-30, 30], scale: [0.85, 1.15]}
      hsv: 0.3
      hed: {p: 0.8, alpha: 0.2, beta: 0.02}
      brightness_contrast: 0.3
      blur: 0.1

A list of names (``[hflip, vflip, rot90]``) uses each transform's default
probability.  Geometric transforms move image and mask together; colour
transforms touch the image only.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, Sequence

import albumentations as A
import cv2
import numpy as np

from wsiseg.errors import ConfigError
from wsiseg.imaging.stain import HEDJitter

Factory = Callable[..., A.BasicTransform]


def _affine(p: float, **kw: Any) -> A.Affine:
    """Shift-scale-rotate; mirrored borders so no black corners enter the patch."""
    defaults = dict(
        scale=(0.9, 1.1), translate_percent=(-0.0625, 0.0625), rotate=(-45, 45), border_mode=cv2.BORDER_REFLECT_101
    )
    return A.Affine(p=p, **{**defaults, **kw})


def _hsv(p: float, **kw: Any) -> A.HueSaturationValue:
    """Stain variation: hue, saturation and value shifts."""
    defaults = dict(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10)
    return A.HueSaturationValue(p=p, **{**defaults, **kw})


def _blur(p: float, **kw: Any) -> A.GaussianBlur:
    """Out-of-focus scanning: a small Gaussian blur."""
    return A.GaussianBlur(p=p, **{"blur_limit": (3, 5), **kw})


# name -> (factory(p, **kwargs), default probability)
TRANSFORMS: dict[str, tuple[Factory, float]] = {
    "hflip": (A.HorizontalFlip, 0.5),
    "vflip": (A.VerticalFlip, 0.5),
    "rot90": (A.RandomRotate90, 0.5),
    "transpose": (A.Transpose, 0.5),
    "affine": (_affine, 0.3),
    "hsv": (_hsv, 0.3),
    "hed": (HEDJitter, 0.8),  # H&E stain jitter after colour deconvolution (wsiseg.imaging.stain)
    "color_jitter": (A.ColorJitter, 0.3),
    "brightness_contrast": (A.RandomBrightnessContrast, 0.3),
    "blur": (_blur, 0.1),
    "noise": (A.GaussNoise, 0.1),
}
ALIASES = {"shift_scale_rotate": "affine", "hue_saturation": "hsv"}


def normalise(spec: Mapping[str, Any] | Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Config ``augment`` (mapping or list of names) as ``{name: {p: ..., kwargs...}}``."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, Mapping) else ((name, None) for name in spec)
    out: dict[str, dict[str, Any]] = {}
    for raw, value in items:
        name = ALIASES.get(raw, raw)
        if name not in TRANSFORMS:
            raise ConfigError(f"train.augment: unknown augmentation {raw!r}; choose from {sorted(TRANSFORMS)}")
        options = dict(value) if isinstance(value, Mapping) else {} if value is None else {"p": float(value)}
        options.setdefault("p", TRANSFORMS[name][1])
        if not 0 <= float(options["p"]) <= 1:
            raise ConfigError(f"train.augment.{raw}: probability {options['p']} is not in [0, 1]")
        out[name] = options
    return out


def _tuples(options: Mapping[str, Any]) -> dict[str, Any]:
    """YAML lists as tuples (albumentations' range arguments)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}


def _make(name: str, options: Mapping[str, Any]) -> A.BasicTransform:
    """One transform; a bad or unknown keyword argument (albumentations only warns) is an error naming it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            transform = TRANSFORMS[name][0](**_tuples(options))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"train.augment.{name}: {err}") from None
    invalid = [str(w.message) for w in caught if "not valid" in str(w.message)]
    if invalid:
        raise ConfigError(f"train.augment.{name}: {invalid[0]}")
    return transform


def seed_states(key: Sequence[int], count: int) -> list[int]:
    """``count`` independent 32-bit seeds that are a pure function of the integers ``key``."""
    return [int(s) for s in np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in key]).generate_state(count)]


def reseed(pipeline: A.Compose, *key: int) -> None:
    """Seed ``pipeline`` and each of its transforms with independent streams derived from the integers ``key``.

    The random draws that follow are a pure function of ``key`` (e.g. seed,
    epoch, sample index).  albumentations' own ``set_random_seed`` gives every
    transform the *same* seed, so e.g. ``hflip`` and ``vflip`` of equal
    probability would always fire together; here each gets its own stream."""
    states = seed_states(key, len(pipeline.transforms) + 1)
    pipeline.set_random_seed(states[0])
    for transform, state in zip(pipeline.transforms, states[1:]):
        transform.set_random_seed(state)


def build_augmentation(spec: Mapping[str, Any] | Sequence[str] | None, seed: int) -> A.Compose | None:
    """A seeded albumentations pipeline from config ``augment`` (None when empty).

    Transforms with probability 0 are left out; a bad keyword argument is an
    error naming the transform.  Each transform draws from its own stream
    (see :func:`reseed`)."""
    transforms = []
    for name, options in normalise(spec).items():
        if float(options["p"]) == 0:
            continue
        transforms.append(_make(name, options))
    if not transforms:
        return None
    pipeline = A.Compose(transforms, seed=seed)
    reseed(pipeline, seed)
    return pipeline
