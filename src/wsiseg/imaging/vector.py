"""Vectorisation of masks into valid polygons traced on pixel edges, and QuPath-style GeoJSON features.

Objects are the 8-connected components of a mask (the same objects
:func:`wsiseg.report.objects` counts for the object-level F1).  Each object's
outline follows the pixel edges (``rasterio.features.shapes``), so a
polygon's area equals the object's pixel count, single pixels included.  The
pieces of an object that touch only at a corner become one MultiPolygon (a
Polygon whose ring touches itself is invalid), and rings are oriented as
RFC 7946 asks: exteriors counter-clockwise, holes clockwise (in the
coordinates as written, x = column, y = row).
"""

from __future__ import annotations

import uuid
from typing import Iterator, Sequence

import numpy as np
import shapely
from rasterio.features import shapes
from rasterio.transform import Affine
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.polygon import orient
from skimage.measure import label

from wsiseg.errors import ConfigError

# Namespace of the feature ids: uuid5(NAMESPACE, slide/class/geometry) is the same for the same object.
NAMESPACE = uuid.UUID("6f1c0d52-5b0e-4c5e-9a57-2f1d0b0a7e16")


def label_objects(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Object ids 1..n (0 = background) of a binary mask: 8-connected components, as the object metrics count them."""
    labels, n = label(np.asarray(mask) > 0, return_num=True, connectivity=2)
    return labels.astype(np.int32), int(n)


def _oriented(geometry: Polygon | MultiPolygon) -> Polygon | MultiPolygon:
    """RFC 7946 orientation: exterior rings counter-clockwise, holes clockwise."""
    if isinstance(geometry, Polygon):
        return orient(geometry, sign=1.0)
    return MultiPolygon([orient(p, sign=1.0) for p in geometry.geoms])


def object_geometries(labels: np.ndarray, scale: float = 1.0) -> dict[int, Polygon | MultiPolygon]:
    """Valid, RFC 7946-oriented outline of every object id > 0 in ``labels``, traced on pixel edges.

    Coordinates are pixel-corner positions (x = column, y = row) times
    ``scale``, so an object's area is its pixel count times ``scale**2``.
    Pieces of one id that touch only at corners form a MultiPolygon."""
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    parts: dict[int, list[Polygon]] = {}
    # 4-connected tracing keeps every polygon simple; parts of one id are joined below
    for geometry, value in shapes(labels, mask=labels > 0, connectivity=4, transform=Affine.scale(scale)):
        parts.setdefault(int(value), []).append(shape(geometry))
    out = {}
    for value, polygons in sorted(parts.items()):
        geometry = polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)
        if not geometry.is_valid:  # not seen from pixel-edge tracing; repair rather than emit an invalid object
            pieces = [
                g for g in shapely.get_parts(shapely.get_parts(shapely.make_valid(geometry))) if isinstance(g, Polygon)
            ]
            geometry = pieces[0] if len(pieces) == 1 else MultiPolygon(pieces)
        out[value] = _oriented(geometry)
    return out


def mask_geometries(mask: np.ndarray, scale: float = 1.0) -> list[Polygon | MultiPolygon]:
    """Outlines of a binary mask's objects (see :func:`object_geometries`), in object-id order."""
    labels, _ = label_objects(mask)
    return list(object_geometries(labels, scale).values())


def object_measurements(
    labels: np.ndarray, n: int, probability: np.ndarray | None = None, scale: float = 1.0, mpp: float | None = None
) -> list[dict[str, float]]:
    """QuPath measurements of objects 1..n of ``labels``: ``Area px^2`` (level-0 pixels, i.e. pixel
    count x ``scale**2``), ``Area µm^2`` when ``mpp`` (level-0 micrometres per pixel) is known, and
    ``Mean probability`` (0..1, from a probability map of the same shape, if given)."""
    counts = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(float)
    rows = [{"Area px^2": c * scale**2} for c in counts]
    if mpp:
        for row in rows:
            row["Area µm^2"] = row["Area px^2"] * mpp**2
    if probability is not None:
        if probability.shape != labels.shape:
            raise ValueError(f"probability map {probability.shape} differs from the mask {labels.shape}")
        sums = np.bincount(labels.ravel(), weights=np.asarray(probability, np.float64).ravel(), minlength=n + 1)[1:]
        for row, s, c in zip(rows, sums, counts):
            row["Mean probability"] = round(float(s / c), 4)
    return rows


def feature_id(slide_id: str, class_name: str, geometry: Polygon | MultiPolygon) -> str:
    """A UUID for a feature, the same each time the same object of the same slide and class is exported."""
    return str(uuid.uuid5(NAMESPACE, f"{slide_id}/{class_name}/{geometry.wkb_hex}"))


def qupath_features(
    mask: np.ndarray,
    class_name: str,
    colour: Sequence[int],
    slide_id: str = "slide",
    probability: np.ndarray | None = None,
    scale: float = 1.0,
    mpp: float | None = None,
    object_type: str = "annotation",
) -> Iterator[dict]:
    """GeoJSON Features, one per object of a binary ``mask``, as QuPath (0.4+) writes and imports them.

    Each has a UUID ``id``, a Polygon or MultiPolygon ``geometry`` (pixel edges,
    coordinates x ``scale``), and ``properties`` with ``objectType``
    (``annotation`` or ``detection``), ``classification {name, color}`` and
    ``measurements`` (see :func:`object_measurements`)."""
    if object_type not in ("annotation", "detection"):
        raise ConfigError(f"object_type must be 'annotation' or 'detection', not {object_type!r}")
    labels, n = label_objects(mask)
    geometries = object_geometries(labels, scale)
    measurements = object_measurements(labels, n, probability, scale, mpp)
    for value, geometry in geometries.items():
        yield {
            "type": "Feature",
            "id": feature_id(slide_id, class_name, geometry),
            "geometry": mapping(geometry),
            "properties": {
                "objectType": object_type,
                "classification": {"name": class_name, "color": [int(c) for c in colour]},
                "measurements": measurements[value - 1],
            },
        }
