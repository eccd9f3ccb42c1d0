"""Separate touching objects (nuclei, glands) of a binary prediction mask: distance-transform watershed, or
markers from a contour-aware model (DCAN: the object interior is the foreground away from predicted contours).

The mask stays binary: a one-pixel background line is carved between the
watershed regions of each touching group, so the 8-connected components that
object F1 (:func:`wsiseg.report.match_objects`) and the GeoJSON export
(:func:`wsiseg.imaging.vector.label_objects`) count are the separated objects.

Seeds are the maxima of the (lightly smoothed) distance transform at least
``min_distance`` pixels apart; a component without a seed stays one object.
A slide's mask is processed by row bands with ``margin`` rows of context
(like :mod:`wsiseg.imaging.postprocess`), so memory does not grow with slide size.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import zarr
from skimage.feature import peak_local_max
from skimage.measure import label
from skimage.morphology import erosion
from skimage.segmentation import watershed

METHODS = ("watershed", "contour")  # contour: needs a model trained with train.contour_weight > 0


def min_distance_px(min_distance_um: float, mpp: float | None, fallback_px: int) -> int:
    """Seed distance in pixels: ``min_distance_um`` / ``mpp`` (level-0 um/px) when the pixel size is known, else ``fallback_px``."""
    if mpp:
        return max(1, int(round(min_distance_um / mpp)))
    return max(1, int(fallback_px))


def _tie_breaker(shape: tuple[int, int], row0: int) -> np.ndarray:
    """Tiny values (< 1e-4) that are a fixed function of the global pixel position (``row0`` = the first row's).

    Added to the distance transform so that no two pixels tie: seeds and cuts then
    come out the same in every band window that holds an object whole."""
    rows = np.arange(row0, row0 + shape[0], dtype=np.int64)[:, None]
    cols = np.arange(shape[1], dtype=np.int64)[None, :]
    return ((rows * 7919 + cols * 104729) % 1000003) * 1e-10


def watershed_instances(binary: np.ndarray, min_distance: int, row0: int = 0) -> np.ndarray:
    """Instance ids (int32, 0 = background) of a binary mask: watershed of the distance transform from seeds
    ``min_distance`` px apart; every foreground pixel gets an id (a component without a seed keeps its own).
    ``row0``: the mask's first row in the slide (for band windows, see :func:`_tie_breaker`)."""
    binary = np.asarray(binary) > 0
    components, count = label(binary, return_num=True, connectivity=2)
    if count == 0:
        return components.astype(np.int32)
    exact = cv2.distanceTransform(binary.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    distance = cv2.GaussianBlur(exact, (0, 0), 1.0).astype(np.float64) + _tie_breaker(binary.shape, row0)
    peaks = peak_local_max(distance, min_distance=min_distance, labels=components, exclude_border=False)
    peaks = peaks[
        np.lexsort(peaks.T[::-1])
    ]  # ids in raster order: which side of a cut is carved does not depend on the band
    markers = np.zeros(binary.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    seeded = np.zeros(count + 1, bool)
    seeded[components[tuple(peaks.T)]] = True
    unseeded = ~seeded[components] & binary
    markers[unseeded] = (len(peaks) + components[unseeded]).astype(np.int32)  # the whole component is its own seed
    return watershed(-distance, markers, mask=binary, connectivity=2).astype(np.int32)


def contour_target(instances: np.ndarray, width: int = 1) -> np.ndarray:
    """uint8 0/1 contour of an instance label image (0 = background): the pixels of each object that touch
    another object or the background, grown by ``width`` px (a band across the line between two touching
    objects): what a contour-aware model learns to predict beside the foreground (DCAN)."""
    from skimage.segmentation import find_boundaries

    edges = find_boundaries(np.asarray(instances), connectivity=2, mode="inner")
    if width > 0 and edges.any():
        edges = cv2.dilate(edges.astype(np.uint8), np.ones((2 * width + 1,) * 2, np.uint8)).astype(bool)
    return edges.astype(np.uint8)


def contour_instances(binary: np.ndarray, contour: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Instance ids (int32, 0 = background) of a binary mask from a predicted contour probability map (the
    mask's shape, 0..1): the markers are the connected parts of the foreground where the contour probability
    is below ``threshold`` (object interiors), and each grows back over the foreground by watershed on the
    contour probability; a component with no interior keeps one id."""
    binary = np.asarray(binary) > 0
    components, count = label(binary, return_num=True, connectivity=2)
    if count == 0:
        return components.astype(np.int32)
    contour = np.asarray(contour, np.float32)
    markers, seeds = label(binary & (contour < threshold), return_num=True, connectivity=1)
    markers = markers.astype(np.int32)
    seeded = np.zeros(count + 1, bool)
    seeded[components[markers > 0]] = True
    unseeded = ~seeded[components] & binary
    markers[unseeded] = (seeds + components[unseeded]).astype(np.int32)
    return watershed(contour, markers, mask=binary, connectivity=2).astype(np.int32)


def carve_boundaries(instances: np.ndarray) -> np.ndarray:
    """uint8 0/1 mask of ``instances`` in which no two differently labelled pixels are 8-neighbours.

    A pixel is cleared when one of its 8 neighbours has a smaller non-zero id, so
    each boundary costs one pixel on one side."""
    big = np.iinfo(np.int32).max
    padded = np.pad(np.where(instances > 0, instances, big).astype(np.int32), 1, constant_values=big)
    lowest = erosion(padded, np.ones((3, 3), bool))[1:-1, 1:-1]  # smallest id among the 8 neighbours and the pixel
    return ((instances > 0) & (lowest >= instances)).astype(np.uint8)


def split_touching(binary: np.ndarray, min_distance: int, row0: int = 0) -> np.ndarray:
    """uint8 0/1 mask with touching objects of ``binary`` separated (see module doc); ``row0`` as in :func:`watershed_instances`."""
    return carve_boundaries(watershed_instances(binary, min_distance, row0))


def split_mask(
    mask: zarr.Array,
    min_distance: int,
    band: int = 2048,
    margin: int = 256,
    contour: Callable[[int, int], np.ndarray] | None = None,
    contour_threshold: float = 0.5,
) -> None:
    """Apply :func:`split_touching` in place to a (H, W) zarr mask, band by band with ``margin`` (<= ``band``) rows of context.

    ``contour(top, bottom)``: the predicted contour probability (0..1) of mask rows [top, bottom), when the
    objects are split by :func:`contour_instances` instead of the distance transform.  Each window sees the
    original mask: the context rows a previous band has already rewritten are taken from a copy kept before
    that write."""
    height, margin = mask.shape[-2], min(margin, band)
    kept: np.ndarray | None = None  # original rows [y0 - margin, y0) of the band about to be processed
    for y0 in range(0, height, band):
        y1 = min(height, y0 + band)
        top, bottom = max(0, y0 - margin), min(height, y1 + margin)
        window = np.asarray(mask[top:bottom, :])
        if kept is not None:
            window[: y0 - top] = kept[len(kept) - (y0 - top) :]
        kept = window[max(top, y1 - margin) - top : y1 - top].copy()
        if contour is None:
            split = split_touching(window, min_distance, top)
        else:
            split = carve_boundaries(contour_instances(window, contour(top, bottom), contour_threshold))
        mask[y0:y1, :] = split[y0 - top : y1 - top]
