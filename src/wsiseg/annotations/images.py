"""Mask images: binary or instance-label images (foreground above a threshold), RGB colour-coded multi-class
masks mapped to class indices by a palette, and folders of one mask image per object (DSB2018 ``masks/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from wsiseg.annotations.base import BINARY, Block
from wsiseg.errors import MaskError, SlideError
from wsiseg.readers.base import guarded
from wsiseg.readers.registry import open_reader


def parse_palette(palette, source: str = "palette") -> dict[int, int]:
    """Map packed ``0xRRGGBB`` colours to class indices.

    ``palette`` is a mapping ``{"#ff0000": 1, "0,255,0": 2}`` (hex or
    comma-separated RGB keys) or a list of ``[r, g, b]`` whose position is the
    class index.  Black is class 0 unless the palette says otherwise.
    """
    if isinstance(palette, dict):
        items = list(palette.items())
    elif isinstance(palette, (list, tuple)):
        items = [(colour, index) for index, colour in enumerate(palette)]
    else:
        raise MaskError(
            f"{source}: expected a mapping colour -> class or a list of [r, g, b], got {type(palette).__name__}"
        )
    table = {0: 0}
    for colour, index in items:
        key = _colour_key(colour, source)
        if not isinstance(index, (int, np.integer)) or not 0 <= int(index) <= 255:
            raise MaskError(f"{source}: class index for {colour!r} must be an integer 0..255, got {index!r}")
        table[key] = int(index)
    return table


def load_palette(text: str) -> dict | list:
    """A palette from JSON text or from the JSON file named by ``text`` (the CLI's ``--palette``)."""
    path = Path(text)
    try:
        return json.loads(path.read_text() if path.suffix.lower() == ".json" and path.is_file() else text)
    except json.JSONDecodeError as err:
        raise MaskError(
            f"palette {text!r}: not JSON ({err}); expected e.g. '{{\"#ff0000\": 1}}' or a .json file"
        ) from None


def _colour_key(colour, source: str) -> int:
    try:
        if isinstance(colour, str) and colour.startswith("#") and len(colour) == 7:
            return int(colour[1:], 16)
        parts = [int(v) for v in (colour.split(",") if isinstance(colour, str) else colour)]
        if len(parts) != 3 or not all(0 <= v <= 255 for v in parts):
            raise ValueError
        return (parts[0] << 16) | (parts[1] << 8) | parts[2]
    except (ValueError, TypeError, AttributeError):
        raise MaskError(f"{source}: cannot read colour {colour!r}; use '#rrggbb', 'r,g,b' or [r, g, b]") from None


def _hex(key: int) -> str:
    return f"#{key:06x}"


class ImageMask:
    """A mask image, read in full-width row bands.

    Without a palette a pixel is foreground when any channel exceeds
    ``threshold`` (0: any non-zero pixel, for 0/1, 0/255 and instance-label
    images; e.g. 127 for JPEG-compressed masks).  With a palette (``{packed colour: class}``) an
    RGB(A) mask is mapped to class indices; colours not in the palette are
    collected over the whole mask and reported together.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, int],
        palette: dict[int, int] | None = None,
        threshold: int = 0,
        max_decoded_pixels: int | None = None,
    ):
        self.path, self.shape, self.palette, self.threshold = path, shape, palette, threshold
        self.empty = None  # known only once read
        self.found = "mask image read with a palette" if palette else f"mask image read with mask_threshold {threshold}"
        try:
            self.reader, self._tif = open_reader(
                path, max_decoded_pixels=max_decoded_pixels, reader="tifffile"
            )  # masks: exact values
        except SlideError as err:
            raise MaskError(str(err)) from None
        if tuple(self.reader.shape) != tuple(shape):
            self.close()
            raise MaskError(f"{path}: mask shape {tuple(self.reader.shape)} differs from image shape {tuple(shape)}")
        if palette is not None and (self.reader.channels < 3 or np.dtype(self.reader.dtype) != np.uint8):
            self.close()
            raise MaskError(
                f"{path}: a palette needs an 8-bit RGB mask image, got {self.reader.channels} channel(s) of {self.reader.dtype}"
            )
        self.classes = (
            BINARY
            if palette is None
            else {index: ((key >> 16) & 255, (key >> 8) & 255, key & 255) for key, index in palette.items() if index}
        )
        self._keys = np.array(sorted(palette), np.uint32) if palette else None
        self._values = np.array([palette[k] for k in sorted(palette)], np.uint8) if palette else None

    def blocks(self, chunk: int) -> Iterator[Block]:
        """Full-width bands of ``chunk`` rows: 0/1 foreground, or class indices with a palette.

        Raises :class:`MaskError` listing the colours missing from the palette after the last band."""
        unknown: dict[int, int] = {}
        try:
            for y0, raw in guarded(self.reader.bands(chunk), self.path):
                yield (
                    y0,
                    0,
                    self._classes(raw, unknown)
                    if self.palette
                    else (raw > self.threshold).any(axis=2).astype(np.uint8),
                )
        finally:
            self.close()
        if unknown:
            listed = ", ".join(f"{_hex(k)} ({n} px)" for k, n in sorted(unknown.items(), key=lambda kv: -kv[1])[:20])
            raise MaskError(f"{self.path}: {len(unknown)} colour(s) not in the palette: {listed}")

    def instance_blocks(self, chunk: int) -> Iterator[Block]:
        """uint32 object ids 1.. in tiles of ``chunk``: the 8-connected regions of one pixel value, so an
        instance-label image's touching objects stay apart (GlaS, MoNuSeg) and a binary mask's objects are its
        connected components.  Reads the whole image (convert asks only for small slides)."""
        from skimage.measure import label

        reader, tif = open_reader(self.path, reader="tifffile")
        values = np.zeros(self.shape, np.uint32)
        try:
            for y0, raw in guarded(reader.bands(chunk), self.path):
                raw = raw.reshape(*raw.shape[:2], -1)
                key = raw[:, :, 0].astype(np.uint32)
                for c in range(1, min(3, raw.shape[2])):  # RGB: the packed colour
                    key = (key << 8) | raw[:, :, c].astype(np.uint32)
                key[~(raw > self.threshold).any(axis=2)] = 0
                values[y0 : y0 + len(raw)] = key
        finally:
            if tif is not None:
                tif.close()
        ids = label(values, background=0, connectivity=2).astype(np.uint32)
        height, width = self.shape
        for y0 in range(0, height, chunk):
            for x0 in range(0, width, chunk):
                yield y0, x0, ids[y0 : y0 + chunk, x0 : x0 + chunk]

    def _classes(self, raw: np.ndarray, unknown: dict[int, int]) -> np.ndarray:
        """Class indices of an RGB band; unknown colours are counted into ``unknown`` (and set to 0)."""
        rgb = raw[:, :, :3].astype(np.uint32)
        keys = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        known = self._keys[pos] == keys
        if not known.all():
            colours, counts = np.unique(keys[~known], return_counts=True)
            for colour, count in zip(colours.tolist(), counts.tolist()):
                unknown[colour] = unknown.get(colour, 0) + count
        return np.where(known, self._values[pos], 0).astype(np.uint8)

    def close(self) -> None:
        """Release the open file."""
        if self._tif is not None:
            self._tif.close()
            self._tif = None


class InstanceFolderMask:
    """A folder with one mask image per object (DSB2018 ``masks/*.png``): their union, and object ids.

    Every image must have the slide's shape; object ``i`` (file order) gets
    id ``i + 1``, a later file winning where two overlap.  The folder is
    read whole (a uint32 label image): meant for the small images such
    datasets hold."""

    def __init__(self, path: Path, shape: tuple[int, int], threshold: int = 0):
        self.path, self.shape, self.classes = path, shape, BINARY
        files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in MASK_IMAGE_SUFFIXES)
        if not files:
            raise MaskError(f"{path}: mask folder holds no mask images ({', '.join(MASK_IMAGE_SUFFIXES)})")
        self.labels = np.zeros(shape, np.uint32)
        for i, file in enumerate(files, start=1):
            image = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise MaskError(f"{file}: cannot read mask image")
            if image.shape[:2] != tuple(shape):
                raise MaskError(f"{file}: mask shape {image.shape[:2]} differs from image shape {tuple(shape)}")
            inside = image > threshold
            self.labels[inside.any(axis=2) if inside.ndim == 3 else inside] = i
        self.empty = not self.labels.any()
        self.found = f"{len(files)} mask image(s), none with a pixel above mask_threshold {threshold}"

    def _tiles(self, chunk: int, binary: bool) -> Iterator[Block]:
        height, width = self.shape
        for y0 in range(0, height, chunk):
            for x0 in range(0, width, chunk):
                block = self.labels[y0 : y0 + chunk, x0 : x0 + chunk]
                yield y0, x0, (block > 0).astype(np.uint8) if binary else block

    def blocks(self, chunk: int) -> Iterator[Block]:
        return self._tiles(chunk, binary=True)

    def instance_blocks(self, chunk: int) -> Iterator[Block]:
        """uint32 object ids 1.. in tiles of ``chunk``."""
        return self._tiles(chunk, binary=False)


MASK_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
