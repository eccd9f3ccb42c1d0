"""OME-NGFF (v0.4) multiscale slide stores: writing pyramids and reading regions.

Layout of ``{slide}.zarr`` (zarr format 2, Blosc-zstd chunks)::

    0, 1, 2, ...          image pyramid, axes (c, y, x), uint8 RGB
    labels/mask/0, 1, ... label pyramid, axes (y, x), uint8 0/1 (or class indices):
                          an NGFF image-label, so viewers (napari) overlay it as a 2-D
                          labels layer on the image (stores written before this kept a
                          c = 1 axis, (c, y, x); readers accept both, see :func:`read_plane`)

Every level is written and read chunk by chunk, so memory stays bounded
whatever the slide size.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import zarr

from wsiseg.errors import StoreError
from wsiseg.resolution import PixelSize
from wsiseg.store.chunks import read_padded, read_plane, read_region


class SlideStore:
    """Read access to a converted slide: regions of image and mask at any downscale."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.root = zarr.open_group(self.path, mode="r")
            meta = self.root.attrs["multiscales"][0]
        except Exception as err:
            raise StoreError(f"{self.path}: not an OME-NGFF slide store ({err})") from None
        self.levels = [self.root[d["path"]] for d in meta["datasets"]]
        self.mask_levels: list[zarr.Array] = []
        if "labels" in self.root and "mask" in self.root["labels"]:
            label = self.root["labels/mask"]
            self.mask_levels = [label[d["path"]] for d in label.attrs["multiscales"][0]["datasets"]]
        self.instances: zarr.Array | None = None  # object ids (uint32, level 0) when the annotation had objects
        if "labels" in self.root and "instances" in self.root["labels"]:
            self.instances = self.root["labels/instances/0"]
        info = self.root.attrs.get("wsiseg", {})
        self.slide_id = info.get("slide_id", self.path.stem)
        self.pixel_size = PixelSize.from_attrs(info)
        _, self.height, self.width = self.levels[0].shape

    @property
    def has_mask(self) -> bool:
        """Whether the store holds a ground-truth label image."""
        return bool(self.mask_levels)

    def mask_plane(self, k: int = 0, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """(h, w) labels of ``rows, cols`` of pyramid level ``k`` of the ground truth (see :func:`read_plane`)."""
        return read_plane(self.mask_levels[k], rows, cols)

    def instance_plane(self) -> np.ndarray | None:
        """Level-0 object ids (h, w) when the annotation had objects, else None."""
        return None if self.instances is None else read_plane(self.instances)

    def level_for(self, downscale: float) -> int:
        """Coarsest pyramid level whose scale does not exceed ``downscale``."""
        k = int(math.floor(math.log2(downscale) + 1e-9)) if downscale >= 1 else 0
        return max(0, min(k, len(self.levels) - 1))

    def _region(self, levels: list[zarr.Array], y0: int, x0: int, size: tuple[int, int], downscale: float, fill: int):
        k = self.level_for(downscale)
        f = 2**k
        out_h, out_w = size
        span_y, span_x = out_h * downscale, out_w * downscale
        ly0, lx0 = int(math.floor(y0 / f)), int(math.floor(x0 / f))
        ly1, lx1 = int(math.ceil((y0 + span_y) / f)), int(math.ceil((x0 + span_x) / f))
        block = read_region(levels[k], ly0, ly1, lx0, lx1, fill)
        if block.shape[:2] != (out_h, out_w):
            block = cv2.resize(block, (out_w, out_h), interpolation=cv2.INTER_AREA)
            if block.ndim == 2:
                block = block[:, :, None]
        return block

    def read_image(self, y0: int, x0: int, size: tuple[int, int], downscale: float = 1.0) -> np.ndarray:
        """RGB (h, w, 3) of the level-0 box at (y0, x0) spanning ``size * downscale`` pixels.

        Outside the slide is white (background)."""
        return self._region(self.levels, y0, x0, size, downscale, 255)

    def read_mask(self, y0: int, x0: int, size: tuple[int, int], downscale: float = 1.0) -> np.ndarray:
        """Binary (h, w) uint8 mask of the same box as :meth:`read_image`.

        Read from level 0 and area-resampled (a pixel is foreground when at
        least half of its footprint is), so coverage is exact at any downscale."""
        if not self.has_mask:
            raise StoreError(f"{self.path}: slide has no mask")
        h, w = size
        span_y, span_x = int(round(h * downscale)), int(round(w * downscale))
        block = (read_padded(self.mask_levels[0], y0, y0 + span_y, x0, x0 + span_x, 0)[0] > 0).astype(np.uint8)
        if block.shape != (h, w):
            block = cv2.resize(block.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) >= 0.5
        return block.astype(np.uint8)

    def dims(self, downscale: float) -> tuple[int, int]:
        """(height, width) of the slide at ``downscale``."""
        return math.ceil(self.height / downscale), math.ceil(self.width / downscale)
