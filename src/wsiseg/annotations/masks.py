"""Annotation sources rasterised block by block onto a slide's pixel grid.

Supported: a Kaggle RLE table (CSV with ``id`` and ``encoding``/``rle``
columns), GeoJSON / HuBMAP JSON polygons (holes and MultiPolygons included;
parts outside the image are clipped with a warning), Aperio / MoNuSeg XML
annotations (``Regions/Region/Vertices``), binary or instance-label mask
images (pixels above a threshold are foreground), a folder of one mask image
per object (DSB2018 ``masks/``) and RGB colour-coded multi-class masks mapped
to class indices by a palette.

Sources that know their objects (polygon files, mask folders) also yield
instance ids (:meth:`instance_blocks`), which the object metrics use so that
touching nuclei count as separate objects.

Every source has ``empty`` (True when it is known, without rasterising, to
hold no foreground; False when it has some; None when only rasterising can
tell) and ``found`` (what the file holds, for the error about an empty mask).
"""

from __future__ import annotations

from pathlib import Path

from wsiseg.annotations.base import MaskSource
from wsiseg.annotations.images import ImageMask, InstanceFolderMask, parse_palette
from wsiseg.annotations.polygons import POLYGON_READERS, PolygonMask
from wsiseg.annotations.rle_table import RLETableMask
from wsiseg.errors import MaskError


def open_mask(
    path: str | Path,
    slide_id: str,
    shape: tuple[int, int],
    palette=None,
    threshold: int = 0,
    max_decoded_pixels: int | None = None,
) -> MaskSource:
    """Open and validate the annotation at ``path`` for slide ``slide_id`` of ``shape``.

    ``path`` is an RLE table (``.csv``), a polygon file (``.json``,
    ``.geojson``, Aperio ``.xml``), a mask image or a folder of per-object
    mask images.  ``palette`` (see :func:`parse_palette`) applies to mask
    images; ``threshold`` is the value a mask pixel must exceed to be
    foreground (mask images and folders without a palette);
    ``max_decoded_pixels`` limits PNG/JPEG mask images (decoded whole).
    """
    path = Path(path)
    if path.is_dir():
        return InstanceFolderMask(path, shape, threshold)
    if not path.is_file():
        raise MaskError(f"{path}: mask file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return RLETableMask(path, slide_id, shape)
    if suffix in POLYGON_READERS:
        return PolygonMask(path, shape)
    palette = parse_palette(palette, f"{path} palette") if palette else None
    return ImageMask(path, shape, palette, threshold, max_decoded_pixels)
