"""Read source slides (TIFF/OME-TIFF/SVS, PNG/JPEG) region by region.

TIFFs are opened through tifffile's zarr interface, so a region read decodes
only the tiles or strips it touches.  Every region comes back as uint8
(h, w, 3) RGB whatever the file's layout: (H,W,3), planar (3,H,W), HuBMAP's
(1,1,3,H,W), grayscale (H,W) or RGBA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import zarr

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}


class SlideError(ValueError):
    """A source slide that cannot be read; the message names the file."""


def _to_uint8(block: np.ndarray, path: Path) -> np.ndarray:
    if block.dtype == np.uint8:
        return block
    if block.dtype == np.uint16:
        return (block // 257).astype(np.uint8)  # full uint16 range onto uint8
    if block.dtype == bool:
        return block.astype(np.uint8) * 255
    raise SlideError(f"{path}: unsupported pixel type {block.dtype} (expected uint8 or uint16)")


class SourceSlide:
    """A level-0 view of a source image with region reads in RGB uint8."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SlideError(f"{self.path}: image file not found")
        if self.path.suffix.lower() in RASTER_SUFFIXES:
            self._array, axes = self._open_raster()
        else:
            self._array, axes = self._open_tiff()
        self._plan(axes, self._array.shape)

    def _open_raster(self) -> tuple[np.ndarray, str]:
        import cv2

        data = cv2.imread(str(self.path), cv2.IMREAD_UNCHANGED)
        if data is None:
            raise SlideError(f"{self.path}: not a readable PNG/JPEG image")
        if data.ndim == 3:
            data = cv2.cvtColor(data, cv2.COLOR_BGRA2RGBA if data.shape[2] == 4 else cv2.COLOR_BGR2RGB)
            return data, "YXS"
        return data, "YX"

    def _open_tiff(self) -> tuple[zarr.Array, str]:
        try:
            with tifffile.TiffFile(self.path) as tif:
                if not tif.series:
                    raise SlideError(f"{self.path}: TIFF holds no image series")
                series = tif.series[0]
                axes, shape = series.levels[0].axes, series.levels[0].shape
            store = tifffile.imread(self.path, aszarr=True, series=0, level=0)
            array = zarr.open_array(store, mode="r")
        except SlideError:
            raise
        except Exception as err:  # tifffile raises many types for broken files
            raise SlideError(f"{self.path}: cannot read as TIFF ({type(err).__name__}: {err})") from None
        if tuple(array.shape) != tuple(shape):
            raise SlideError(f"{self.path}: inconsistent TIFF shape {array.shape} vs {shape}")
        return array, axes

    def _plan(self, axes: str, shape: tuple[int, ...]) -> None:
        if "Y" not in axes or "X" not in axes:
            raise SlideError(f"{self.path}: no spatial Y/X axes in TIFF layout {axes!r}")
        self.height, self.width = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        if self.height == 0 or self.width == 0:
            raise SlideError(f"{self.path}: zero-size image {shape}")
        self._axes = axes
        channel_axes = [a for a in axes if a not in "YX" and shape[axes.index(a)] > 1]
        if len(channel_axes) > 1:
            raise SlideError(f"{self.path}: cannot interpret layout {axes!r} with shape {shape}")
        self._channel = channel_axes[0] if channel_axes else None
        channels = shape[axes.index(self._channel)] if self._channel else 1
        if channels not in (1, 3, 4):
            raise SlideError(
                f"{self.path}: {channels} channels in layout {axes!r}; only grayscale, RGB and RGBA are supported"
            )
        self.channels = channels

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of level 0."""
        return self.height, self.width

    def read_raw(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Read rows ``y0:y1`` and columns ``x0:x1`` in the file's dtype as (h, w, channels)."""
        index = []
        for axis in self._axes:
            if axis == "Y":
                index.append(slice(y0, y1))
            elif axis == "X":
                index.append(slice(x0, x1))
            elif axis == self._channel:
                index.append(slice(None))
            else:
                index.append(0)
        block = np.asarray(self._array[tuple(index)])
        kept = [a for a in self._axes if a in ("Y", "X") or a == self._channel]
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(self._channel)] if self._channel else [])
        block = np.transpose(block, order)
        return block if block.ndim == 3 else block[:, :, None]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Read rows ``y0:y1`` and columns ``x0:x1`` as uint8 RGB (h, w, 3)."""
        block = _to_uint8(self.read_raw(y0, y1, x0, x1), self.path)
        if block.shape[2] == 1:
            block = np.repeat(block, 3, axis=2)
        return np.ascontiguousarray(block[:, :, :3])
