"""Tissue detection on a low-resolution pyramid level.

Methods (``method``):

- ``saturation``: HSV saturation above a fixed threshold (``saturation``, 0..1).
  Stained tissue is coloured; glass and background are grey or white.
- ``otsu``: Otsu's threshold on the (median-blurred) saturation, never below
  the fixed threshold, so a slide that is all glass does not become half tissue.
- ``otsu_gray``: Otsu's threshold on the darkness (255 - grayscale), for
  unstained or grayscale slides; floored the same way.
- ``fluorescence``: Otsu's threshold on the brightness (grayscale), for
  fluorescence and other bright-on-dark images; never below the darkest
  background (1st percentile) plus ``saturation`` x 255, so a dark empty field
  (even with a camera offset) does not become half tissue.
- ``auto``: one of the above per slide (:func:`choose_method`): mostly dark →
  ``fluorescence``; light and grey (no stain colour anywhere) → ``otsu_gray``;
  else (stained brightfield, e.g. H&E) → ``saturation``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from wsiseg.errors import ConfigError
from wsiseg.store.chunks import interleave
from wsiseg.store.slide import SlideStore
from wsiseg.utils.io import atomic_path

METHODS = ("saturation", "otsu", "otsu_gray", "fluorescence", "auto")

DARK_MEDIAN = 96  # median grey value below which a slide counts as bright-on-dark (fluorescence)
COLOUR_SHARE = 0.005  # share of stain-coloured pixels above which a light slide counts as stained


def _otsu_above(channel: np.ndarray, floor: float) -> np.ndarray:
    """Pixels of a uint8 ``channel`` above max(Otsu's threshold, ``floor``)."""
    blurred = cv2.medianBlur(np.ascontiguousarray(channel), 5)
    otsu, _ = cv2.threshold(blurred, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return blurred > max(otsu, floor)


class _Channels:
    """The grey and HSV-saturation images of one RGB uint8 image, each computed when first asked for
    (``auto``'s choice and the mask then share them)."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = np.ascontiguousarray(rgb)
        self._gray: np.ndarray | None = None
        self._sat: np.ndarray | None = None

    @property
    def gray(self) -> np.ndarray:
        if self._gray is None:
            self._gray = cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)
        return self._gray

    @property
    def sat(self) -> np.ndarray:
        if self._sat is None:
            self._sat = np.ascontiguousarray(cv2.cvtColor(self.rgb, cv2.COLOR_RGB2HSV)[:, :, 1])
        return self._sat


def _median(image: np.ndarray) -> float:
    """``np.median`` of a uint8 image, from its histogram (a twentieth of the time on a 2048² level; OpenCV's
    float32 counts are exact below 2**24 pixels, numpy's median above)."""
    if image.size >= 2**24:
        return float(np.median(image))
    counts = np.cumsum(cv2.calcHist([image], [0], None, [256], [0, 256]).ravel().astype(np.int64))
    n = int(counts[-1])
    lower, upper = (int(np.searchsorted(counts, i, side="right")) for i in ((n - 1) // 2, n // 2))
    return (lower + upper) / 2


def choose_method(rgb: np.ndarray, saturation: float = 0.08) -> str:
    """The concrete method ``auto`` uses for an RGB uint8 (low-resolution) image.

    Mostly dark (median grey below ``DARK_MEDIAN``) → ``fluorescence``; light
    with fewer than ``COLOUR_SHARE`` of pixels saturated above ``saturation``
    → ``otsu_gray``; else ``saturation``.  Saturation is only counted on pixels
    bright enough for it to mean stain colour (HSV saturation of near-black
    noise is meaningless)."""
    return _choose(_Channels(rgb), saturation)


def _choose(image: _Channels, saturation: float) -> str:
    if _median(image.gray) < DARK_MEDIAN:
        return "fluorescence"
    coloured = cv2.countNonZero((image.sat > saturation * 255) & (image.gray >= DARK_MEDIAN // 2))
    return "saturation" if coloured >= COLOUR_SHARE * image.gray.size else "otsu_gray"


def tissue_mask(rgb: np.ndarray, saturation: float = 0.08, method: str = "saturation") -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 image by ``method`` (see the module docstring)."""
    if method not in METHODS:
        raise ConfigError(f"unknown tissue method {method!r}; choose from {list(METHODS)}")
    return _mask(_Channels(rgb), saturation, method)


def _mask(image: _Channels, saturation: float, method: str) -> np.ndarray:
    if method == "auto":
        method = _choose(image, saturation)
    if method == "fluorescence":
        background = float(
            np.percentile(cv2.medianBlur(image.gray, 5), 1)
        )  # the darkest background, e.g. an offset or glow
        return _otsu_above(image.gray, background + saturation * 255)
    if method == "otsu_gray":
        return _otsu_above(255 - image.gray, saturation * 255)
    return _otsu_above(image.sat, saturation * 255) if method == "otsu" else image.sat > saturation * 255


class TissueMap:
    """Tissue mask of a whole slide at low resolution, queried by level-0 boxes.

    ``method`` is the method asked for (possibly ``auto``); the attribute
    ``method`` is the one used on this slide."""

    def __init__(self, store: SlideStore, saturation: float = 0.08, max_side: int = 2048, method: str = "saturation"):
        if method not in METHODS:
            raise ConfigError(f"unknown tissue method {method!r}; choose from {list(METHODS)}")
        k = len(store.levels) - 1
        while k > 0 and max(store.levels[k - 1].shape[1:]) <= max_side:
            k -= 1
        self.factor = 2**k
        level = _Channels(interleave(np.asarray(store.levels[k][:])))  # channel-last once (cv2.merge), not in each step
        self.requested = method
        self.method = _choose(level, saturation) if method == "auto" else method
        self.mask = _mask(level, saturation, self.method)
        self._sums: np.ndarray | None = None

    @property
    def share(self) -> float:
        """Tissue share of the whole slide."""
        return cv2.countNonZero(self.mask.view(np.uint8)) / self.mask.size

    def save(self, path: str | Path) -> None:
        """Write the mask as a PNG (tissue white), atomically."""
        with atomic_path(path) as tmp:
            ok, data = cv2.imencode(".png", self.mask.astype(np.uint8) * 255)
            Path(tmp).write_bytes(data.tobytes())

    def fraction(self, y0: int, x0: int, height: int, width: int) -> float:
        """Share of tissue pixels in the level-0 box (y0, x0, height, width)."""
        f = self.factor
        ys, xs = max(0, y0 // f), max(0, x0 // f)
        ye, xe = max(ys + 1, -(-(y0 + height) // f)), max(xs + 1, -(-(x0 + width) // f))
        h, w = self.mask.shape
        if ys >= h or xs >= w:
            return 0.0
        if self._sums is None:  # summed-area table: each query is four lookups, not a sum over its window
            self._sums = cv2.integral(
                self.mask.view(np.uint8), sdepth=cv2.CV_32S if self.mask.size < 2**31 else cv2.CV_64F
            )
        s, y1, x1 = self._sums, min(ye, h), min(xe, w)
        inside = s[y1, x1] - s[ys, x1] - s[y1, xs] + s[ys, xs]
        # the box may reach past the slide: count that part as non-tissue
        return float(inside) / ((ye - ys) * (xe - xs))
