"""Annotation sources rasterised block by block onto a slide's pixel grid.

Supported: a Kaggle RLE table (CSV with ``id`` and ``encoding`` columns),
GeoJSON / HuBMAP JSON polygons (holes and MultiPolygons included), and
binary or label mask images (any non-zero pixel is foreground).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, shape
from skimage.draw import polygon as draw_polygon

from . import rle
from .slide import SlideError, SourceSlide

log = logging.getLogger(__name__)

Block = tuple[int, int, np.ndarray]  # (y0, x0, uint8 mask block)
RLE_COLUMNS = ("encoding", "rle", "predicted")


class MaskError(ValueError):
    """An annotation that cannot be used with its slide; the message names the file."""


class MaskSource(Protocol):
    """Yields the binary mask of one slide in blocks that tile the slide."""

    path: Path

    def blocks(self, chunk: int) -> Iterator[Block]:
        """Yield ``(y0, x0, block)`` covering the whole slide, each block uint8 0/1."""
        ...


class RLETableMask:
    """One row of a Kaggle ``id,encoding`` table; decoded in full-height column bands."""

    def __init__(self, path: Path, slide_id: str, shape: tuple[int, int]):
        self.path, self.shape = path, shape
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as err:
            raise MaskError(f"{path}: cannot read RLE table ({err})") from None
        column = next((c for c in RLE_COLUMNS if c in table.columns), None)
        if "id" not in table.columns or column is None:
            raise MaskError(f"{path}: RLE table needs columns 'id' and 'encoding', found {list(table.columns)}")
        rows = table.loc[table["id"] == slide_id, column]
        if rows.empty:
            raise MaskError(f"{path}: no row with id '{slide_id}'")
        if len(rows) > 1:
            raise MaskError(f"{path}: {len(rows)} rows with id '{slide_id}'")
        try:
            self.starts, self.lengths = rle.parse(rows.iloc[0], shape, source=f"{path} (id {slide_id})")
        except rle.RLEError as err:
            raise MaskError(str(err)) from None

    def blocks(self, chunk: int) -> Iterator[Block]:
        height, width = self.shape
        for x0 in range(0, width, chunk):
            x1 = min(width, x0 + chunk)
            yield 0, x0, rle.decode_band(self.starts, self.lengths, height, x0, x1)


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


class PolygonMask:
    """GeoJSON / HuBMAP JSON polygons in level-0 pixel coordinates, rasterised per tile."""

    def __init__(self, path: Path, shape: tuple[int, int]):
        self.path, self.shape = path, shape
        try:
            features = _features(json.loads(Path(path).read_text()))
            polygons = [p for f in features for p in _polygons(shape_of(f))]
        except Exception as err:
            raise MaskError(f"{path}: cannot read polygons ({err})") from None
        frame = box(0, 0, shape[1], shape[0])
        inside = [p for p in polygons if p.intersects(frame)]
        if len(inside) < len(polygons):
            log.warning("%s: %d polygon(s) lie outside the %dx%d image and are ignored",
                        path, len(polygons) - len(inside), shape[1], shape[0])
        if any(not frame.contains(p) for p in inside):
            log.warning("%s: polygons crossing the image border are clipped", path)
        self.polygons = inside
        self.tree = shapely.STRtree(inside)

    def blocks(self, chunk: int) -> Iterator[Block]:
        height, width = self.shape
        for y0 in range(0, height, chunk):
            for x0 in range(0, width, chunk):
                tile = (min(chunk, height - y0), min(chunk, width - x0))
                block = np.zeros(tile, np.uint8)
                for i in self.tree.query(box(x0, y0, x0 + tile[1], y0 + tile[0])):
                    poly = self.polygons[i]
                    _fill(block, poly.exterior.coords, x0, y0, 1)
                    for hole in poly.interiors:
                        _fill(block, hole.coords, x0, y0, 0)
                yield y0, x0, block


def shape_of(feature: dict):
    """Shapely geometry of one GeoJSON feature (or bare geometry)."""
    return shape(feature.get("geometry", feature))


def _fill(block: np.ndarray, coords, x0: int, y0: int, value: int) -> None:
    xy = np.asarray(coords, dtype=np.float64)
    rows, cols = draw_polygon(xy[:, 1] - y0, xy[:, 0] - x0, shape=block.shape)
    block[rows, cols] = value


class ImageMask:
    """A binary or label mask image; any non-zero pixel is foreground."""

    def __init__(self, path: Path, shape: tuple[int, int]):
        self.path, self.shape = path, shape
        try:
            self.source = SourceSlide(path)
        except SlideError as err:
            raise MaskError(str(err)) from None
        if self.source.shape != tuple(shape):
            raise MaskError(f"{path}: mask shape {self.source.shape} differs from image shape {tuple(shape)}")

    def blocks(self, chunk: int) -> Iterator[Block]:
        height, width = self.shape
        for y0 in range(0, height, chunk):
            y1 = min(height, y0 + chunk)
            raw = self.source.read_raw(y0, y1, 0, width)
            yield y0, 0, (raw != 0).any(axis=2).astype(np.uint8)


def open_mask(path: str | Path, slide_id: str, shape: tuple[int, int]) -> MaskSource:
    """Open and validate the annotation at ``path`` for slide ``slide_id`` of ``shape``."""
    path = Path(path)
    if not path.is_file():
        raise MaskError(f"{path}: mask file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return RLETableMask(path, slide_id, shape)
    if suffix in (".json", ".geojson"):
        return PolygonMask(path, shape)
    return ImageMask(path, shape)
