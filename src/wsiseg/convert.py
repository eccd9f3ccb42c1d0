"""Stage ``convert``: source slide (+ annotation) → OME-NGFF multiscale zarr store."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from .io import atomic_path
from .masks import open_mask
from .slide import SourceSlide
from .store import NGFF_VERSION, build_pyramid, compressor, create_level, level_count, multiscales

log = logging.getLogger(__name__)

OMERO_CHANNELS = [
    {"label": name, "color": color, "active": True, "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
    for name, color in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
]


def convert_slide(
    image: str | Path,
    out: str | Path,
    mask: str | Path | None = None,
    slide_id: str | None = None,
    chunk: int = 512,
    compression: str = "zstd",
    level: int = 5,
) -> Path:
    """Convert ``image`` (and its ``mask`` annotation, if any) to an OME-NGFF zarr at ``out``.

    The image is read and written block by block (``chunk`` rows at a time,
    at most 16 chunks wide), so memory does not grow with slide area.  The
    annotation (RLE table row, GeoJSON polygons or mask image) is validated
    against the image shape before any pixel is written and stored as the
    label image ``labels/mask``.  The store appears at ``out`` only once it is
    complete.
    """
    out = Path(out)
    slide_id = slide_id or Path(image).stem
    source = SourceSlide(image)
    height, width = source.shape
    annotation = open_mask(mask, slide_id, source.shape) if mask else None
    codec = compressor(compression, level)
    levels = level_count(height, width, chunk)
    block_w = chunk * 16
    log.info("convert %s: %dx%d px, %d levels, chunk %d -> %s", slide_id, width, height, levels, chunk, out)

    with atomic_path(out) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        base = create_level(root, "0", (3, height, width), chunk, codec)
        for y0 in tqdm(range(0, height, chunk), desc=f"convert {slide_id}", unit="row", mininterval=5):
            y1 = min(height, y0 + chunk)
            for x0 in range(0, width, block_w):
                x1 = min(width, x0 + block_w)
                base[:, y0:y1, x0:x1] = source.read(y0, y1, x0, x1).transpose(2, 0, 1)
        build_pyramid(root, levels, chunk, codec, "mean")
        root.attrs.update(
            {
                "multiscales": multiscales(slide_id, levels, "mean"),
                "omero": {"version": NGFF_VERSION, "name": slide_id, "channels": OMERO_CHANNELS},
                "wsiseg": {"slide_id": slide_id, "source": str(image), "mask": str(mask) if mask else None},
            }
        )
        if annotation is not None:
            labels = root.create_group("labels")
            labels.attrs["labels"] = ["mask"]
            group = labels.create_group("mask")
            label0 = create_level(group, "0", (1, height, width), chunk, codec)
            foreground = 0
            for y0, x0, block in annotation.blocks(chunk):
                label0[0, y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]] = block
                foreground += int(np.count_nonzero(block))
            build_pyramid(group, levels, chunk, codec, "max")
            group.attrs.update(
                {
                    "multiscales": multiscales("mask", levels, "max"),
                    "image-label": {
                        "version": NGFF_VERSION,
                        "colors": [{"label-value": 1, "rgba": [255, 0, 0, 160]}],
                        "source": {"image": "../../"},
                    },
                }
            )
            log.info("convert %s: mask from %s, %.2f%% foreground", slide_id, mask, 100 * foreground / (height * width))
    return out
