"""Polygon annotations: GeoJSON / HuBMAP JSON (holes and MultiPolygons included; parts outside the image are
clipped with a warning) and Aperio / MoNuSeg XML, rasterised by scanline spans block by block.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, shape

from wsiseg.annotations.base import BINARY, Block
from wsiseg.errors import MaskError

log = logging.getLogger(__name__)


def _polygons(geometry) -> list[Polygon]:
    if isinstance(geometry, Polygon):
        return [geometry]
    if isinstance(geometry, MultiPolygon):
        return list(geometry.geoms)
    if hasattr(geometry, "geoms"):
        return [p for g in geometry.geoms for p in _polygons(g)]
    return []


def _features(data) -> list[dict]:
    if isinstance(data, dict):
        if data.get("type") == "FeatureCollection":
            return data.get("features", [])
        if data.get("type") == "Feature":
            return [data]
        if "coordinates" in data:
            return [{"geometry": data}]
    if isinstance(data, list):
        return data
    raise ValueError("expected a GeoJSON FeatureCollection, Feature, geometry or a list of features")


def _check_finite(path: Path, what: str, polygons: list[Polygon]) -> None:
    """Refuse NaN / infinite coordinates (GEOS cannot work with them) naming the file and the feature."""
    if polygons and not np.isfinite(shapely.get_coordinates(polygons)).all():
        raise MaskError(f"{path}: {what} has a non-finite coordinate (NaN or infinity)")


REVIEW_CLASS = "Review"  # the regions `wsiseg review` asks a pathologist to look at (wsiseg.review)
IGNORED_CLASSES = (REVIEW_CLASS,)  # QuPath classifications that mark no object: not foreground in a mask


def classification(feature: dict) -> str | None:
    """The QuPath classification name of a GeoJSON feature (``properties.classification.name``), if any."""
    properties = feature.get("properties") if isinstance(feature, dict) else None
    value = (properties or {}).get("classification")
    return value.get("name") if isinstance(value, dict) else value if isinstance(value, str) else None


def read_geojson(path: Path) -> tuple[list[Polygon], Counter]:
    """Polygons of a GeoJSON / HuBMAP JSON file (FeatureCollection, Feature, geometry or list of features),
    and the number of features by geometry type (``Polygon``, ``Point``, ..., ``no geometry``).  Features
    classified as one of :data:`IGNORED_CLASSES` (``Review`` regions from ``wsiseg review``) are left out."""
    features = _features(json.loads(Path(path).read_text()))
    polygons: list[Polygon] = []
    kinds: Counter = Counter()
    for index, feature in enumerate(features):
        if classification(feature) in IGNORED_CLASSES:
            kinds[f"{classification(feature)} region (ignored)"] += 1
            continue
        with np.errstate(invalid="ignore"):  # shapely warns about NaN coordinates, refused just below
            geometry = shape_of(feature)
        kinds["no geometry" if geometry.is_empty else geometry.geom_type] += 1
        parts = [p for p in _polygons(geometry) if not p.is_empty]
        _check_finite(path, f"feature {index}", parts)
        polygons += parts
    return polygons, kinds


def read_aperio(path: Path) -> tuple[list[Polygon], Counter]:
    """One polygon per ``Region`` of an Aperio ImageScope / MoNuSeg XML file (``Vertex X= Y=`` in pixels),
    and the number of regions with and without the 3 vertices a polygon needs."""
    root = ET.parse(path).getroot()
    polygons: list[Polygon] = []
    kinds: Counter = Counter()
    for index, region in enumerate(root.iter("Region")):
        xy = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        if len(xy) < 3:
            kinds["Region with < 3 vertices"] += 1
            continue
        kinds["Region"] += 1
        if not np.isfinite(xy).all():
            raise MaskError(f"{path}: Region {index} has a non-finite coordinate (NaN or infinity)")
        polygon = shapely.make_valid(Polygon(xy))
        polygons += [p for p in _polygons(polygon) if not p.is_empty]
    if not polygons and root.tag != "Annotations":
        raise ValueError(f"expected an Aperio <Annotations> document, found <{root.tag}>")
    return polygons, kinds


def geojson_polygons(path: Path) -> list[Polygon]:
    """Polygons of a GeoJSON / HuBMAP JSON file (FeatureCollection, Feature, geometry or list of features)."""
    return read_geojson(path)[0]


def aperio_polygons(path: Path) -> list[Polygon]:
    """One polygon per ``Region`` of an Aperio ImageScope / MoNuSeg XML file (``Vertex X= Y=`` in pixels)."""
    return read_aperio(path)[0]


POLYGON_READERS = {".json": read_geojson, ".geojson": read_geojson, ".xml": read_aperio}
SCANLINE_CROSSINGS = 1 << 22  # edge/row crossings computed at once by Ring.spans (~100 MB of temporaries)

Spans = tuple[np.ndarray, np.ndarray, np.ndarray]  # (row, first column, last column) of pixel runs, inclusive


class Ring:
    """One closed ring prepared for scanline rasterisation: pixel runs per row, by rows on demand.

    A pixel is inside when its centre (integer x, y) lies inside the ring or
    on its boundary: the pixels :func:`skimage.draw.polygon` gives, at a cost
    that grows with the edges crossing the requested rows plus the pixels,
    instead of pixels x vertices (a 1,000,000-vertex outline takes seconds,
    not hours).  Even-odd rule: self-intersecting rings alternate in and out.
    """

    def __init__(self, coords):
        xy = np.asarray(coords, dtype=np.float64).reshape(len(coords), -1)[:, :2]  # (x, y), any z dropped
        if len(xy) and not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        xa, ya, xb, yb = xy[:-1, 0], xy[:-1, 1], xy[1:, 0], xy[1:, 1]
        sloped = ya != yb
        xa, ya, xb, yb = xa[sloped], ya[sloped], xb[sloped], yb[sloped]
        ylo = np.minimum(ya, yb)
        order = np.argsort(ylo, kind="stable")
        self.xa, self.ya, self.xb, self.yb = xa[order], ya[order], xb[order], yb[order]
        self.ylo, self.yhi = ylo[order], np.maximum(ya, yb)[order]
        # boundary pixels the crossings miss: horizontal edges on a pixel row, and vertices on a pixel centre
        flat = ~sloped & (xy[:-1, 1] == np.round(xy[:-1, 1]))
        fx0, fx1 = np.minimum(xy[:-1, 0], xy[1:, 0])[flat], np.maximum(xy[:-1, 0], xy[1:, 0])[flat]
        corner = (xy[:-1] == np.round(xy[:-1])).all(axis=1)
        rows = np.concatenate([xy[:-1, 1][flat], xy[:-1, 1][corner]]).astype(np.int64)
        first = np.concatenate([np.ceil(fx0), xy[:-1, 0][corner]]).astype(np.int64)
        last = np.concatenate([np.floor(fx1), xy[:-1, 0][corner]]).astype(np.int64)
        keep = first <= last
        self.fixed: Spans = (rows[keep], first[keep], last[keep])

    def spans(self, top: int, bottom: int) -> Spans:
        """The pixel runs ``(row, first, last)`` of rows ``top..bottom-1`` (columns may lie outside the image)."""
        n = int(np.searchsorted(self.ylo, bottom, side="left"))
        live = self.yhi[:n] > top
        ylo, yhi = self.ylo[:n][live], self.yhi[:n][live]
        start = np.maximum(np.ceil(ylo), top).astype(np.int64)  # edge crosses row r when ylo <= r < yhi
        counts = np.maximum(np.minimum(np.ceil(yhi), bottom).astype(np.int64) - start, 0)
        total = int(counts.sum())
        if total > SCANLINE_CROSSINGS and bottom - top > 1:  # very complex rows: fewer rows at a time
            middle = (top + bottom) // 2
            return tuple(np.concatenate(pair) for pair in zip(self.spans(top, middle), self.spans(middle, bottom)))
        edge = np.repeat(np.arange(len(counts)), counts)
        rows = start[edge] + np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        xa, ya, xb, yb = (v[:n][live][edge] for v in (self.xa, self.ya, self.xb, self.yb))
        x = (xa - xb) * (rows - yb) / (ya - yb) + xb  # skimage's crossing formula, for the same rounding
        order = np.lexsort((x, rows))
        rows, x = rows[order], x[order]
        row, first, last = rows[0::2], np.ceil(x[0::2]).astype(np.int64), np.floor(x[1::2]).astype(np.int64)
        run = first <= last
        row, first, last = row[run], first[run], last[run]
        fixed_rows = self.fixed[0]
        extra = (fixed_rows >= top) & (fixed_rows < bottom)
        return (
            np.concatenate([row, fixed_rows[extra]]),
            np.concatenate([first, self.fixed[1][extra]]),
            np.concatenate([last, self.fixed[2][extra]]),
        )


def span_raster(spans: Spans, top: int, left: int, height: int, width: int) -> tuple[int, int, np.ndarray] | None:
    """The runs of ``spans`` inside rows ``top:top+height``, columns ``left:left+width`` as a boolean image
    ``(y, x, pixels)`` of their bounding box only (None when none falls inside)."""
    rows, first, last = spans
    inside = (rows >= top) & (rows < top + height) & (last >= left) & (first < left + width)
    if not inside.any():
        return None
    rows, first, last = rows[inside], np.maximum(first[inside], left), np.minimum(last[inside], left + width - 1)
    y0, x0 = int(rows.min()), int(first.min())
    h, w = int(rows.max()) - y0 + 1, int(last.max()) - x0 + 1
    index = (rows - y0) * (w + 1)
    size = h * (w + 1)
    diff = np.bincount(index + first - x0, minlength=size) - np.bincount(index + last - x0 + 1, minlength=size)
    return y0, x0, np.cumsum(diff.reshape(h, w + 1), axis=1)[:, :w] > 0


class PolygonMask:
    """Polygons in level-0 pixel coordinates (GeoJSON, HuBMAP JSON, Aperio XML), rasterised per tile.

    Polygons are united (an island inside another polygon's hole stays
    foreground); parts outside the image are clipped and reported in a
    warning on the ``wsiseg.annotations.masks`` logger (the rule's log file).  Each
    polygon is one object for :meth:`instance_blocks`.  Rasterised by
    scanline (:class:`Ring`), one band of tiles at a time: time and memory
    grow with the vertices and the pixels, not their product.
    """

    def __init__(self, path: Path, shape: tuple[int, int]):
        self.path, self.shape, self.classes = path, shape, BINARY
        reader = POLYGON_READERS[Path(path).suffix.lower()]
        try:
            polygons, kinds = reader(path)
        except MaskError:
            raise
        except Exception as err:
            raise MaskError(f"{path}: cannot read polygons ({type(err).__name__}: {err})") from None
        height, width = shape
        bounds = shapely.bounds(polygons).reshape(-1, 4)  # (minx, miny, maxx, maxy); boxes only: no GEOS topology
        touches = (bounds[:, 0] <= width) & (bounds[:, 2] >= 0) & (bounds[:, 1] <= height) & (bounds[:, 3] >= 0)
        crosses = touches & ((bounds[:, 0] < 0) | (bounds[:, 1] < 0) | (bounds[:, 2] > width) | (bounds[:, 3] > height))
        inside = [p for p, keep in zip(polygons, touches) if keep]
        if len(inside) < len(polygons) or crosses.any():
            log.warning(
                "%s: %d of %d polygon(s) lie entirely outside the %dx%d image (ignored), %d cross its border (clipped)",
                path,
                len(polygons) - len(inside),
                len(polygons),
                width,
                height,
                int(crosses.sum()),
            )
        noun = "region" if reader is read_aperio else "feature"
        total = sum(kinds.values())
        listed = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        self.found = (
            f"{total} {noun}{'' if total == 1 else 's'}{': ' + listed if listed else ''}, "
            f"{len(inside)} polygon{'' if len(inside) == 1 else 's'} inside the {width}x{height} image"
        )
        self.empty = True if not inside else None  # polygons inside may still cover no pixel centre
        self.polygons = inside
        self.tree = shapely.STRtree(inside)
        self._rings: dict[int, list[Ring]] = {}

    def rings(self, index: int) -> list[Ring]:
        """Exterior then holes of polygon ``index``, prepared for rasterisation (kept for later tiles)."""
        if index not in self._rings:
            polygon = self.polygons[index]
            self._rings[index] = [Ring(polygon.exterior.coords)] + [Ring(h.coords) for h in polygon.interiors]
        return self._rings[index]

    def _tiles(self, chunk: int, dtype, instances: bool) -> Iterator[Block]:
        height, width = self.shape
        for y0 in range(0, height, chunk):
            rows = min(chunk, height - y0)
            near = self.tree.query(box(0, y0 - 1, width, y0 + rows))
            band = {int(i): [ring.spans(y0, y0 + rows) for ring in self.rings(int(i))] for i in near}
            for x0 in range(0, width, chunk):
                block = np.zeros((rows, min(chunk, width - x0)), dtype)
                for i in sorted(self.tree.query(box(x0, y0, x0 + block.shape[1], y0 + block.shape[0]))):
                    _paint(block, band.get(int(i), ()), x0, y0, int(i) + 1 if instances else 1)
                yield y0, x0, block

    def blocks(self, chunk: int) -> Iterator[Block]:
        return self._tiles(chunk, np.uint8, instances=False)

    def instance_blocks(self, chunk: int) -> Iterator[Block]:
        """Like :meth:`blocks`, with uint32 object ids 1.. (polygon order; a later polygon wins where two overlap)."""
        return self._tiles(chunk, np.uint32, instances=True)


def shape_of(feature: dict):
    """Shapely geometry of one GeoJSON feature (or bare geometry)."""
    geometry = feature.get("geometry", feature) if isinstance(feature, dict) else None
    if not geometry:
        return Polygon()
    kind, coordinates = geometry.get("type"), geometry.get("coordinates")
    # polygons straight from arrays: much faster than shapely's shape() on large outlines
    # (benchmarks/rasterise_bench.py times the whole read; benchmarks/journal/code-comments.md)
    try:
        if kind == "Polygon":
            return _polygon(coordinates)
        if kind == "MultiPolygon":
            return MultiPolygon([_polygon(rings) for rings in coordinates])
    except (ValueError, TypeError, IndexError, shapely.errors.ShapelyError):
        pass  # unusual input: shapely's own reader says what is wrong
    return shape(geometry)


def _polygon(rings: list) -> Polygon:
    """A polygon from GeoJSON rings (exterior, then holes)."""
    return Polygon(np.asarray(rings[0], dtype=np.float64), [np.asarray(r, dtype=np.float64) for r in rings[1:]])


def _paint(block: np.ndarray, rings: Sequence[Spans], x0: int, y0: int, value: int = 1) -> None:
    """Set ``block`` (whose top-left pixel is (y0, x0)) to ``value`` inside the first ring's ``spans`` minus the
    other rings' (holes; their boundary pixels are background, as skimage's fill-then-erase gives)."""
    if not rings:
        return
    outer = span_raster(rings[0], y0, x0, block.shape[0], block.shape[1])
    if outer is None:
        return
    top, left, inside = outer
    for hole in rings[1:]:
        cut = span_raster(hole, top, left, inside.shape[0], inside.shape[1])
        if cut is not None:
            hy, hx, pixels = cut
            inside[hy - top : hy - top + pixels.shape[0], hx - left : hx - left + pixels.shape[1]] &= ~pixels
    block[top - y0 : top - y0 + inside.shape[0], left - x0 : left - x0 + inside.shape[1]][inside] = value
