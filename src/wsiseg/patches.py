"""Stage ``patches``: grid patches at training resolution, filtered by mask coverage."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import zarr
from tqdm import tqdm

from .io import atomic_path
from .store import SlideStore, StoreError, compressor
from .tissue import TissueMap

log = logging.getLogger(__name__)

INDEX_COLUMNS = ["slide_id", "index", "row", "col", "x", "y", "downscale", "size", "coverage", "tissue", "reason"]


@dataclass(frozen=True)
class PatchParams:
    """How patches are cut and which are kept."""

    size: int = 256
    downscale: float = 2.0
    stride: int | None = None  # in patch pixels; default: size (no overlap)
    min_coverage: float = 0.1
    max_coverage: float = 0.9
    negative_ratio: float = 0.5  # tissue-only negatives kept per positive patch
    min_tissue: float = 0.25  # tissue share a negative patch needs
    tissue_saturation: float = 0.08
    seed: int = 0


def grid_positions(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of a patch grid along one axis; the last patch is flush with the end."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def select_patches(coverage: np.ndarray, tissue: np.ndarray, params: PatchParams, rng: np.random.Generator) -> np.ndarray:
    """Reason codes per grid cell: ``positive``, ``negative`` or '' (dropped).

    Positives have ``min_coverage <= coverage <= max_coverage``; negatives are
    drawn at random among cells with no foreground and at least ``min_tissue``
    tissue, ``negative_ratio`` per positive (rounded).
    """
    reasons = np.full(coverage.shape, "", dtype=object)
    positive = (coverage >= params.min_coverage) & (coverage <= params.max_coverage) & (coverage > 0)
    reasons[positive] = "positive"
    candidates = np.flatnonzero((coverage == 0) & (tissue >= params.min_tissue))
    wanted = min(len(candidates), int(round(params.negative_ratio * positive.sum())))
    if wanted:
        reasons.flat[np.sort(rng.choice(candidates, size=wanted, replace=False))] = "negative"
    return reasons


def extract_patches(slide: str | Path, out_zarr: str | Path, out_csv: str | Path, params: PatchParams = PatchParams()) -> pd.DataFrame:
    """Cut ``slide`` (a converted store with a mask) into patches and write the kept ones.

    Writes ``out_zarr`` with ``images`` (N, size, size, 3) and ``masks``
    (N, size, size) uint8 arrays, and ``out_csv``, one row per patch in the
    same order, with the grid cell, level-0 position, coverage, tissue share
    and the reason it was kept.  Returns that table.
    """
    store = SlideStore(slide)
    if not store.has_mask:
        raise StoreError(f"{slide}: patches need a ground-truth mask (training/validation slides)")
    size, ds = params.size, params.downscale
    stride = params.stride or size
    dh, dw = store.dims(ds)
    rows, cols = grid_positions(dh, size, stride), grid_positions(dw, size, stride)
    span = int(round(size * ds))
    tissue_map = TissueMap(store, params.tissue_saturation)

    coverage = np.zeros((len(rows), len(cols)), np.float64)
    tissue = np.zeros_like(coverage)
    for i, py in enumerate(rows):
        for j, px in enumerate(cols):
            y, x = int(round(py * ds)), int(round(px * ds))
            coverage[i, j] = store.read_mask(y, x, (size, size), ds).mean()
            tissue[i, j] = tissue_map.fraction(y, x, span, span)
    rng = np.random.default_rng([params.seed, zlib.crc32(store.slide_id.encode())])
    reasons = select_patches(coverage, tissue, params, rng)
    kept = np.argwhere(reasons != "")
    log.info(
        "patches %s: %d grid cells, %d positive, %d negative",
        store.slide_id, reasons.size, (reasons == "positive").sum(), (reasons == "negative").sum(),
    )
    records = []
    codec = compressor()
    with atomic_path(out_zarr) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        images = root.create_array("images", shape=(len(kept), size, size, 3), chunks=(1, size, size, 3), dtype="uint8", compressors=codec)
        masks = root.create_array("masks", shape=(len(kept), size, size), chunks=(1, size, size), dtype="uint8", compressors=codec)
        for n, (i, j) in enumerate(tqdm(kept, desc=f"patches {store.slide_id}", unit="patch", mininterval=5)):
            y, x = int(round(rows[i] * ds)), int(round(cols[j] * ds))
            images[n] = store.read_image(y, x, (size, size), ds)
            masks[n] = store.read_mask(y, x, (size, size), ds)
            records.append((store.slide_id, n, i, j, x, y, ds, size, coverage[i, j], tissue[i, j], reasons[i, j]))
        root.attrs.update({"slide_id": store.slide_id, "size": size, "downscale": ds})
    table = pd.DataFrame(records, columns=INDEX_COLUMNS)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5f")
    return table
