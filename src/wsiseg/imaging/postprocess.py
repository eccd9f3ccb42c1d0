"""Light mask post-processing by row bands: drop small objects, fill small holes.

Each band is processed with ``margin`` extra rows above and below.  A
component that reaches the top or bottom of that window continues beyond it,
so it is left alone (it is at least ``margin`` rows tall); every other
component is seen whole, so the result does not depend on the band size.
"""

from __future__ import annotations

import numpy as np
import zarr
from skimage.measure import label


def _small_components(binary: np.ndarray, max_area: int, keep_edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Boolean mask of components of ``binary`` smaller than ``max_area`` not touching the flagged edges.

    ``keep_edges`` = (top, bottom, left, right): components touching a flagged
    edge are never selected."""
    labels = label(binary, connectivity=2 if binary.any() else 1)
    if labels.max() == 0:
        return np.zeros_like(binary, dtype=bool)
    areas = np.bincount(labels.ravel())
    small = areas < max_area
    small[0] = False
    edges = [labels[0], labels[-1], labels[:, 0], labels[:, -1]]
    for flagged, edge in zip(keep_edges, edges):
        if flagged:
            small[np.unique(edge)] = False
    return small[labels]


def clean_mask(window: np.ndarray, min_area: int, max_hole: int, open_top: bool, open_bottom: bool) -> np.ndarray:
    """Remove objects < ``min_area`` px and fill holes < ``max_hole`` px in a 0/1 window."""
    out = window.astype(bool)
    if min_area:
        out &= ~_small_components(out, min_area, (open_top, open_bottom, False, False))
    if max_hole:
        # background touching any border is not a hole (or continues past the window)
        out |= _small_components(~out, max_hole, (True, True, True, True))
    return out.astype(np.uint8)


def postprocess_mask(mask: zarr.Array, min_area: int, max_hole: int, band: int = 2048, margin: int = 256) -> None:
    """Apply :func:`clean_mask` in place to a (H, W) zarr mask (or (1, H, W)), band by band."""
    height = mask.shape[-2]
    for y0 in range(0, height, band):
        y1 = min(height, y0 + band)
        top, bottom = max(0, y0 - margin), min(height, y1 + margin)
        window = np.asarray(mask[..., top:bottom, :]).reshape(bottom - top, -1)
        cleaned = clean_mask(window, min_area, max_hole, open_top=top > 0, open_bottom=bottom < height)
        mask[..., y0:y1, :] = cleaned[y0 - top : y1 - top].reshape(*mask.shape[:-2], y1 - y0, mask.shape[-1])
