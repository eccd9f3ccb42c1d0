"""Tissue detection on a low-resolution pyramid level."""

from __future__ import annotations

import cv2
import numpy as np

from .store import SlideStore


def tissue_mask(rgb: np.ndarray, saturation: float = 0.08) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 image: HSV saturation above ``saturation`` (0..1).

    Stained tissue is coloured; glass and background are grey or white."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    return hsv[:, :, 1] > saturation * 255


class TissueMap:
    """Tissue mask of a whole slide at low resolution, queried by level-0 boxes."""

    def __init__(self, store: SlideStore, saturation: float = 0.08, max_side: int = 2048):
        k = len(store.levels) - 1
        while k > 0 and max(store.levels[k - 1].shape[1:]) <= max_side:
            k -= 1
        self.factor = 2**k
        level = np.asarray(store.levels[k][:]).transpose(1, 2, 0)
        self.mask = tissue_mask(level, saturation)

    def fraction(self, y0: int, x0: int, height: int, width: int) -> float:
        """Share of tissue pixels in the level-0 box (y0, x0, height, width)."""
        f = self.factor
        ys, xs = max(0, y0 // f), max(0, x0 // f)
        ye, xe = max(ys + 1, -(-(y0 + height) // f)), max(xs + 1, -(-(x0 + width) // f))
        window = self.mask[ys:ye, xs:xe]
        if window.size == 0:
            return 0.0
        # the box may reach past the slide: count that part as non-tissue
        full = (ye - ys) * (xe - xs)
        return float(window.sum()) / full
