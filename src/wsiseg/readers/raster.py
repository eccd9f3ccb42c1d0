"""PNG/JPEG images, decoded whole with imagecodecs once the size their header declares is checked
against ``max_decoded_pixels`` (a decompression bomb is refused before any decoding).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from wsiseg.errors import SlideError
from wsiseg.readers.base import ArrayReader
from wsiseg.readers.limits import MAX_DECODED_PIXELS

RASTER_SUFFIXES = {".png", ".jpg", ".jpeg"}


JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def declared_size(path: Path) -> tuple[str, int, int]:
    """``(format, width, height)`` that a PNG (IHDR) or JPEG (SOF marker) header declares, read without decoding.

    Raises :class:`SlideError` for a file that is neither, or whose header is cut short."""
    with open(path, "rb") as fh:
        head = fh.read(24)
        if head.startswith(PNG_SIGNATURE):
            if len(head) < 24 or head[12:16] != b"IHDR":
                raise SlideError(f"{path}: not a readable PNG image (no IHDR header)")
            width, height = struct.unpack(">II", head[16:24])
            return "PNG", width, height
        if not head.startswith(b"\xff\xd8"):
            raise SlideError(f"{path}: not a PNG or JPEG file (it starts with bytes {head[:8]!r})")
        fh.seek(2)
        while True:
            byte = fh.read(1)
            while byte == b"\xff":  # fill bytes before a marker
                marker = fh.read(1)
                if marker != b"\xff":
                    break
            else:
                raise SlideError(f"{path}: not a readable JPEG image (no frame header before the end of the file)")
            code = marker[0] if marker else -1
            if code == -1 or code == 0xD9:
                raise SlideError(f"{path}: not a readable JPEG image (no frame header before the end of the file)")
            if code == 0x01 or 0xD0 <= code <= 0xD8:  # markers without a length
                continue
            length_bytes = fh.read(2)
            if len(length_bytes) < 2:
                raise SlideError(f"{path}: not a readable JPEG image (header cut short)")
            (length,) = struct.unpack(">H", length_bytes)
            if length < 2:
                raise SlideError(f"{path}: not a readable JPEG image (segment length {length})")
            if code in JPEG_SOF:
                frame = fh.read(5)
                if len(frame) < 5:
                    raise SlideError(f"{path}: not a readable JPEG image (frame header cut short)")
                height, width = struct.unpack(">HH", frame[1:5])
                return "JPEG", width, height
            fh.seek(length - 2, os.SEEK_CUR)


def check_decoded_size(path: Path, max_decoded_pixels: int) -> None:
    """Refuse a PNG/JPEG whose header declares more than ``max_decoded_pixels`` pixels, before decoding it.

    Such images are decoded whole, so a small file declaring a huge image
    (a decompression bomb) would otherwise allocate gigabytes."""
    kind, width, height = declared_size(path)
    if width * height > max_decoded_pixels:
        raise SlideError(
            f"{path}: the {kind} header declares {width}x{height} px ({width * height:,} px), over the limit of "
            f"{max_decoded_pixels:,} px for images decoded whole in memory; if it is genuine and the machine "
            "has the memory, raise `convert.max_decoded_pixels` (CLI --max-decoded-pixels), or re-save it as a "
            "tiled TIFF, which is streamed (e.g. `vips tiffsave in.png out.tif --tile --pyramid`)"
        )


def open_raster(path: Path, max_decoded_pixels: int = MAX_DECODED_PIXELS) -> ArrayReader:
    """Decode a PNG/JPEG with imagecodecs, once its header's declared size is checked against ``max_decoded_pixels``."""
    import imagecodecs

    check_decoded_size(path, max_decoded_pixels)
    try:
        data = imagecodecs.imread(str(path))
    except Exception as err:
        raise SlideError(f"{path}: not a readable PNG/JPEG image ({type(err).__name__}: {err})") from None
    if data.ndim not in (2, 3) or 0 in data.shape:
        raise SlideError(f"{path}: unexpected image shape {data.shape}")
    return ArrayReader(data)
