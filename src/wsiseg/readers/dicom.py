"""DICOM whole-slide images (VL Whole Slide Microscopy) read through ``wsidicom``.

A slide is a folder of ``.dcm`` instances (one per pyramid level, plus label
and overview images; concatenations and sparse tilings are handled by
wsidicom) or a single ``.dcm`` file.  Regions of level 0 are decoded tile by
tile (``workers`` threads), so memory is that of the region asked for.
The pixel size is the base level's ``PixelSpacing`` (millimetres, converted
to micrometres).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsiseg.errors import SlideError
from wsiseg.readers.base import PyramidReader
from wsiseg.resolution import UNKNOWN, PixelSize, stated

DICM = b"DICM"  # the magic at byte 128 of a DICOM Part 10 file


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == DICM
    except OSError:
        return False


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM file or a folder holding at least one."""
    if path.is_dir():
        return any(is_dicom_file(p) for p in path.iterdir() if p.is_file())
    return is_dicom_file(path)


class DicomReader(PyramidReader):
    """Level 0 of a DICOM WSI as (h, w, channels) uint8 (RGB, or 1 channel for MONOCHROME2).

    Also reports ``levels`` ((h, w) of each pyramid level), ``associated``
    (``label``/``overview`` when present), ``vendor`` (``dicom``),
    ``pixel_size`` and ``base_dataset``: the base level's DICOM header (a
    pydicom Dataset) that a DICOM Segmentation references."""

    dtype = np.dtype(np.uint8)
    tiled = True
    vendor = "dicom"

    def __init__(self, path: Path, workers: int = 1):
        from wsidicom import WsiDicom

        if path.is_dir() and not is_dicom(path):
            raise SlideError(f"{path}: a folder with no DICOM file (a DICOM WSI is a folder of .dcm instances)")
        try:
            self.wsi = WsiDicom.open(path)
        except Exception as err:  # noqa: BLE001 - wsidicom raises many types
            raise SlideError(f"{path}: wsidicom cannot read it as a DICOM WSI ({type(err).__name__}: {err})") from None
        self.path, self.workers = path, workers
        try:
            self.levels = [(level.size.height, level.size.width) for level in self.wsi.levels]
            self._numbers = [level.level for level in self.wsi.levels]  # wsidicom's level: log2 of the downsample
            self.shape = self.levels[0]
            self.tile_side = max(self.wsi.tile_size.width, self.wsi.tile_size.height)
            self.associated = [
                name for name, found in (("label", self.wsi.labels), ("overview", self.wsi.overviews)) if found
            ]
            self.base_dataset = self.wsi.levels.base_level.datasets[0]
            self.pixel_size = _pixel_size(self.base_dataset, str(path))
            self.channels = int(self.base_dataset.SamplesPerPixel)
        except Exception:
            self.wsi.close()
            raise

    def _read(self, y0: int, y1: int, x0: int, x1: int, level: int = 0) -> np.ndarray:
        """Rows/columns of pyramid level ``level`` (an index into :attr:`levels`; coordinates in its pixels)."""
        image = np.asarray(
            self.wsi.read_region((x0, y0), self._numbers[level], (x1 - x0, y1 - y0), threads=self.workers)
        )
        return image[:, :, None] if image.ndim == 2 else image[:, :, : self.channels]

    def close(self) -> None:
        """Close the DICOM files."""
        self.wsi.close()


def _pixel_size(dataset, where: str) -> PixelSize:
    """Level 0's pixel size from ``PixelSpacing`` (mm; row spacing first) of the shared functional groups
    or the dataset itself; UNKNOWN without it."""
    spacing = None
    shared = dataset.get("SharedFunctionalGroupsSequence")
    if shared and "PixelMeasuresSequence" in shared[0]:
        spacing = shared[0].PixelMeasuresSequence[0].get("PixelSpacing")
    spacing = spacing or dataset.get("PixelSpacing")
    if not spacing:
        return UNKNOWN
    row_mm, column_mm = (float(v) for v in spacing)
    return stated(column_mm * 1000, row_mm * 1000, "DICOM PixelSpacing", where)
