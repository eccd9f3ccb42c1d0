"""H&E stain handling: HED jitter (augmentation) and Macenko / Reinhard normalisation.

*Jitter* (Tellez et al. 2018): colour-deconvolve RGB into haematoxylin, eosin
and DAB concentrations (:func:`skimage.color.rgb2hed`), scale and shift each
by a random factor, convert back.  *Normalisation* maps every image onto the
stain appearance of a reference: Macenko (stain vectors from the optical
density's principal plane, concentrations rescaled to the reference's 99th
percentile) or Reinhard (per-channel mean and standard deviation in Lab).

A fitted normaliser is a plain dict (``{"method": ..., <reference
statistics>}``) so that it travels in the checkpoint's hyper-parameters and
the model card; :func:`normalise_image` applies it to training patches and
prediction tiles alike.  Each image is normalised with its own statistics, so
an image with too little stained tissue to estimate them is left unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import albumentations as A
import cv2
import numpy as np
import zarr
from skimage.color import hed2rgb, rgb2hed

from wsiseg.errors import ConfigError, PatchError, SlideError

METHODS = ("macenko", "reinhard")
IO = 240.0  # background (transmitted) intensity for optical density
OD_MIN = 0.15  # pixels with any channel below this optical density are background
MIN_PIXELS = 500  # fewer stained pixels than this: too little to estimate stain statistics


def hed_jitter(image: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """uint8 RGB with its H, E and DAB concentrations multiplied by ``scale`` and shifted by ``shift`` (3 values each)."""
    hed = rgb2hed(image) * np.asarray(scale, np.float64) + np.asarray(shift, np.float64)
    return (np.clip(hed2rgb(hed), 0, 1) * 255 + 0.5).astype(np.uint8)


class HEDJitter(A.ImageOnlyTransform):
    """Albumentations transform: :func:`hed_jitter` with scale ~ U(1 - alpha, 1 + alpha), shift ~ U(-beta, beta) per stain.

    Draws from the transform's own seeded generator, so :func:`wsiseg.nn.augment.reseed` controls it.
    The defaults are what ``benchmarks/stain_bench.py`` measured (Tellez et al.'s "HED-strong" range)."""

    def __init__(self, alpha: float = 0.2, beta: float = 0.02, p: float = 0.8):
        super().__init__(p=p)
        if not (0 <= alpha < 1 and beta >= 0):
            raise ConfigError(f"alpha must be in [0, 1) and beta >= 0, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def get_params(self) -> dict[str, np.ndarray]:
        rng = self.random_generator
        return {"scale": rng.uniform(1 - self.alpha, 1 + self.alpha, 3), "shift": rng.uniform(-self.beta, self.beta, 3)}

    def apply(self, img: np.ndarray, scale: np.ndarray, shift: np.ndarray, **params: Any) -> np.ndarray:
        return hed_jitter(img, scale, shift)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("alpha", "beta")


def _optical_density(pixels: np.ndarray) -> np.ndarray:
    """(n, 3) optical density of uint8 RGB pixels."""
    return -np.log((pixels.reshape(-1, 3).astype(np.float64) + 1) / IO)


def macenko_stains(pixels: np.ndarray, percentile: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Macenko estimate for RGB ``pixels``: (stain matrix (3, 2): H and E optical-density vectors,
    concentrations (2, n) of every pixel, their 99th percentiles (2,)).

    None when fewer than :data:`MIN_PIXELS` pixels are stained."""
    od = _optical_density(pixels)
    tissue = od[(od > OD_MIN).all(axis=1)]
    if len(tissue) < MIN_PIXELS:
        return None
    _, vectors = np.linalg.eigh(np.cov(tissue.T))
    plane = vectors[:, 1:3]  # the two largest eigenvectors
    projected = tissue @ plane
    phi = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(phi, [percentile, 100 - percentile])
    v1, v2 = plane @ np.array([np.cos(lo), np.sin(lo)]), plane @ np.array([np.cos(hi), np.sin(hi)])
    stains = np.stack([v1, v2] if v1[0] > v2[0] else [v2, v1], axis=1)  # haematoxylin first (absorbs more red)
    stains *= np.sign(stains.sum(axis=0, keepdims=True))  # positive optical densities
    concentrations = np.linalg.pinv(stains) @ od.T
    return stains, concentrations, np.percentile(concentrations, 99, axis=1)


def _lab(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2LAB).reshape(-1, 3)


def fit_normaliser(method: str, images: Iterable[np.ndarray]) -> dict[str, Any]:
    """The ``method`` (macenko | reinhard) normaliser fitted on uint8 RGB ``images`` (pooled) as a plain dict."""
    if method not in METHODS:
        raise ConfigError(f"stain normalisation {method!r} is unknown; choose from {list(METHODS)}")
    pixels = np.concatenate([np.asarray(i)[..., :3].reshape(-1, 3) for i in images])
    if method == "reinhard":
        lab = _lab(pixels.reshape(-1, 1, 3))
        return {"method": method, "mean": lab.mean(axis=0).tolist(), "std": lab.std(axis=0).tolist()}
    fitted = macenko_stains(pixels)
    if fitted is None:
        raise ConfigError(
            f"stain normalisation: the reference has fewer than {MIN_PIXELS} stained pixels; give a reference image with tissue"
        )
    stains, _, max_conc = fitted
    return {"method": method, "stains": stains.tolist(), "max_concentrations": max_conc.tolist()}


def normalise_image(image: np.ndarray, normaliser: Mapping[str, Any] | None) -> np.ndarray:
    """uint8 RGB ``image`` (h, w, 3) with the stain appearance of the ``normaliser``'s reference (unchanged when None)."""
    if not normaliser:
        return image
    if normaliser["method"] == "reinhard":
        lab = _lab(image)
        std = lab.std(axis=0)
        out = (lab - lab.mean(axis=0)) / np.maximum(std, 1e-6) * np.asarray(normaliser["std"]) + np.asarray(
            normaliser["mean"]
        )
        rgb = cv2.cvtColor(out.reshape(image.shape).astype(np.float32), cv2.COLOR_LAB2RGB)
        return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    fitted = macenko_stains(image)
    if fitted is None:
        return image
    _, concentrations, max_conc = fitted
    concentrations *= (np.asarray(normaliser["max_concentrations"]) / np.maximum(max_conc, 1e-6))[:, None]
    rgb = IO * np.exp(-np.asarray(normaliser["stains"]) @ concentrations)
    return np.clip(rgb.T.reshape(image.shape), 0, 255).astype(np.uint8)


def normalise_batch(tiles: np.ndarray, normaliser: Mapping[str, Any] | None) -> np.ndarray:
    """:func:`normalise_image` for each of (n, h, w, 3) uint8 tiles."""
    if not normaliser:
        return tiles
    return np.stack([normalise_image(t, normaliser) for t in tiles])


def reference_pixels(path: str | Path) -> np.ndarray:
    """A sparse grid of uint8 RGB pixels over the whole image file ``path`` (what a normaliser is fitted on)."""
    from wsiseg.readers.registry import open_reader

    reader, tif = open_reader(path)
    try:
        pixels = np.asarray(reader.sample())
    finally:
        reader.close()
        if tif is not None:
            tif.close()
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] < 3:
        raise SlideError(
            f"{path}: a stain reference must be an 8-bit RGB image, found {pixels.dtype} with shape {pixels.shape}"
        )
    return pixels[..., :3]


def fit_training_normaliser(
    method: str | None, reference: str | Path | None, patch_stores: Sequence[str | Path], count: int = 64
) -> dict[str, Any] | None:
    """The normaliser a training run uses: None when ``method`` is None; else fitted on the ``reference``
    image, or (no reference) on up to ``count`` patches spread evenly over the training ``patch_stores``."""
    if not method:
        return None
    if reference:
        return fit_normaliser(method, [reference_pixels(reference)])
    arrays = [zarr.open_group(str(s), mode="r")["images"] for s in patch_stores]
    index = [(a, i) for a in arrays for i in range(a.shape[0])]
    if not index:
        raise PatchError(f"train.stain_normalise: no training patches in {list(map(str, patch_stores))} to fit it on")
    picks = np.linspace(0, len(index) - 1, min(count, len(index))).round().astype(int)
    return fit_normaliser(method, [np.asarray(index[k][0][index[k][1]]) for k in picks])
