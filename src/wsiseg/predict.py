"""Stage ``predict``: tiled, blended inference over a slide store, streamed to zarr.

The slide is read in tiles at the model's training resolution (``downscale``
from the checkpoint).  Tiles overlap and are blended with a Gaussian window,
so there are no seams.  Tile rows are processed top to bottom and finished
rows are flushed (upsampled to level 0) to the output store straight away:
memory holds one band of tiles, never the slide.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import zarr
from tqdm import tqdm

from .data import to_tensor
from .io import atomic_path
from .model import load_model
from .patches import grid_positions
from .store import SlideStore, compressor
from .tissue import TissueMap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictParams:
    """Tiling, blending and thresholding settings (config ``predict``)."""

    tile: int = 512  # tile side at training resolution
    overlap: int = 128  # pixels shared by neighbouring tiles
    batch_size: int = 8
    threshold: float = 0.5
    min_tissue: float = 0.02  # tiles with less tissue are skipped (probability 0)
    tissue_saturation: float = 0.08
    chunk: int = 512
    device: str = "auto"


def gaussian_window(size: int, sigma_scale: float = 0.125) -> np.ndarray:
    """(size, size) float32 Gaussian blending weights, strictly positive."""
    coords = np.arange(size, dtype=np.float32) - (size - 1) / 2
    g = np.exp(-(coords**2) / (2 * (sigma_scale * size) ** 2))
    window = np.outer(g, g)
    return np.maximum(window / window.max(), 1e-4).astype(np.float32)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _BandWriter:
    """Upsamples finished rows of the downscaled probability map and writes them at level 0."""

    def __init__(self, prob: zarr.Array, mask: zarr.Array, downscale: float, threshold: float):
        self.prob, self.mask, self.ds, self.threshold = prob, mask, downscale, threshold
        self.height, self.width = prob.shape

    def write(self, y0: int, band: np.ndarray) -> None:
        top = int(round(y0 * self.ds))
        bottom = min(self.height, int(round((y0 + band.shape[0]) * self.ds)))
        if bottom <= top:
            return
        full_w = int(round(band.shape[1] * self.ds))
        up = cv2.resize(band, (full_w, int(round(band.shape[0] * self.ds))), interpolation=cv2.INTER_LINEAR)
        up = up[: bottom - top, : self.width]
        self.prob[top:bottom, :] = np.clip(np.rint(up * 255), 0, 255).astype(np.uint8)
        self.mask[top:bottom, :] = (up > self.threshold).astype(np.uint8)


def load_ensemble(checkpoints: Sequence[str | Path], device: torch.device) -> list[torch.nn.Module]:
    """Load one or more checkpoints; they must share the training resolution."""
    models = [load_model(c, map_location=device).to(device) for c in checkpoints]
    scales = {(float(m.hparams.downscale)) for m in models}
    if len(scales) != 1:
        raise ValueError(f"checkpoints {list(map(str, checkpoints))} were trained at different downscales {sorted(scales)}")
    return models


def predict_slide(
    slide: str | Path,
    checkpoints: str | Path | Sequence[str | Path],
    out: str | Path,
    params: PredictParams = PredictParams(),
) -> Path:
    """Predict ``slide`` with the model(s) in ``checkpoints``; write ``prob`` and ``mask`` to ``out``.

    Several checkpoints (e.g. cross-validation folds) are averaged in
    probability space.  ``out`` is a zarr store with level-0 ``prob`` (uint8,
    probability x 255) and ``mask`` (uint8 0/1, probability > threshold)."""
    if isinstance(checkpoints, (str, Path)):
        checkpoints = [checkpoints]
    if params.overlap >= params.tile:
        raise ValueError(f"predict.overlap ({params.overlap}) must be smaller than predict.tile ({params.tile})")
    store = SlideStore(slide)
    device = resolve_device(params.device)
    models = load_ensemble(checkpoints, device)
    ds = float(models[0].hparams.downscale)
    T, stride = params.tile, params.tile - params.overlap
    dh, dw = store.dims(ds)
    ys, xs = grid_positions(dh, T, stride), grid_positions(dw, T, stride)
    window = gaussian_window(T)
    tissue = TissueMap(store, params.tissue_saturation)
    span = int(math.ceil(T * ds))
    autocast = device.type == "cuda"
    log.info("predict %s: %dx%d at downscale %g, %d tiles of %d px on %s", store.slide_id, dw, dh, ds, len(ys) * len(xs), T, device)

    skipped = 0
    with atomic_path(out) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        arrays = [
            root.create_array(name, shape=(store.height, store.width), chunks=(params.chunk, params.chunk), dtype="uint8", compressors=compressor())
            for name in ("prob", "mask")
        ]
        writer = _BandWriter(*arrays, ds, params.threshold)
        acc = np.zeros((T, max(dw, T)), np.float32)
        weight = np.zeros_like(acc)
        for r, y in enumerate(tqdm(ys, desc=f"predict {store.slide_id}", unit="tile row", mininterval=5)):
            todo = [x for x in xs if tissue.fraction(int(y * ds), int(x * ds), span, span) >= params.min_tissue]
            skipped += len(xs) - len(todo)
            for b in range(0, len(todo), params.batch_size):
                batch_x = todo[b : b + params.batch_size]
                tiles = [store.read_image(int(round(y * ds)), int(round(x * ds)), (T, T), ds) for x in batch_x]
                batch = torch.stack([to_tensor(t) for t in tiles]).to(device)
                with torch.inference_mode(), torch.autocast(device.type, enabled=autocast):
                    probs = torch.stack([torch.sigmoid(m(batch).float())[:, 0] for m in models]).mean(0).cpu().numpy()
                for x, p in zip(batch_x, probs):
                    acc[:, x : x + T] += p * window
                    weight[:, x : x + T] += window
            final = (ys[r + 1] - y) if r + 1 < len(ys) else min(T, dh - y)
            prob = np.divide(acc[:final, :dw], weight[:final, :dw], out=np.zeros((final, dw), np.float32), where=weight[:final, :dw] > 0)
            writer.write(y, prob)
            acc = np.roll(acc, -final, axis=0)
            weight = np.roll(weight, -final, axis=0)
            acc[T - final :] = 0
            weight[T - final :] = 0
        root.attrs.update(
            {
                "slide_id": store.slide_id,
                "checkpoints": [str(c) for c in checkpoints],
                "downscale": ds,
                "tile": T,
                "overlap": params.overlap,
                "threshold": params.threshold,
                "tiles_skipped": skipped,
            }
        )
    log.info("predict %s: done, %d of %d tiles skipped as non-tissue", store.slide_id, skipped, len(ys) * len(xs))
    return Path(out)
