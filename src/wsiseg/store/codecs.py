"""Lossy chunk codec for compact slide stores: JPEG of planar (3, y, x) RGB chunks.

Slide stores keep OME-NGFF's (c, y, x) axes, so a chunk reaches its codec
as three colour planes.  imagecodecs' JPEG codec wants an interleaved
(y, x, 3) image; :class:`PlanarJpeg` interleaves each chunk and encodes it as
an ordinary YCbCr JPEG (libjpeg-turbo, 4:2:0 chroma like the source slides'
tiles), and decodes back to planes.  Chunk files are plain JPEG files.

Readers need the codec registered under its id ``wsiseg_jpeg`` before they
open such a store: importing :mod:`wsiseg.store.slide` (or this module) does it;
other programs (ome-zarr-py, napari) run ``import wsiseg.store.codecs`` first.
"""

from __future__ import annotations

import cv2
import imagecodecs
import numcodecs
import numpy as np
from numcodecs.abc import Codec


class PlanarJpeg(Codec):
    """JPEG (quality ``level``) of uint8 (3, h, w) RGB chunks."""

    codec_id = "wsiseg_jpeg"

    def __init__(self, level: int = 90):
        self.level = int(level)

    def encode(self, buf) -> bytes:
        planes = np.asarray(buf)
        if planes.ndim != 3 or planes.shape[0] != 3 or planes.dtype != np.uint8:
            raise ValueError(f"wsiseg_jpeg encodes uint8 (3, y, x) RGB chunks, got {planes.dtype} {planes.shape}")
        return self.encode_rgb(cv2.merge(list(planes)))

    def encode_rgb(self, image: np.ndarray) -> bytes:
        """The chunk file of interleaved uint8 (y, x, 3) RGB ``image``: equal to :meth:`encode` of its planes."""
        return imagecodecs.jpeg8_encode(image, level=self.level)

    def decode_rgb(self, buf) -> np.ndarray:
        """Chunk file ``buf`` as interleaved uint8 (y, x, 3) RGB: :meth:`decode`'s pixels before they are split into planes."""
        return imagecodecs.jpeg8_decode(bytes(buf) if not isinstance(buf, (bytes, bytearray, np.ndarray)) else buf)

    def decode(self, buf, out=None) -> np.ndarray:
        image = self.decode_rgb(buf)
        planes = np.empty((3, *image.shape[:2]), np.uint8)
        cv2.split(image, list(planes))
        if out is not None:
            np.copyto(np.asarray(out).reshape(planes.shape), planes)
            return out
        return planes

    def get_config(self) -> dict:
        return {"id": self.codec_id, "level": self.level}


numcodecs.register_codec(PlanarJpeg)
