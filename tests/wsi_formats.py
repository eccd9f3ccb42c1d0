"""Writers of small slides in scanner formats, made here (no downloads): an Aperio-SVS-style TIFF
(the layout OpenSlide's aperio driver reads) and a DICOM WSI converted from it with wsidicomizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

SVS_MPP = 0.499


def tissue_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth RGB content with some noise (compresses like tissue, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 100 * np.sin(xx / 37.0), 128 + 100 * np.cos(yy / 23.0), 128 + 60 * np.sin((xx + yy) / 51.0)], -1)
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def write_svs(path: Path, image: np.ndarray, mpp: float = SVS_MPP, compression: str = "jpeg") -> Path:
    """An Aperio SVS-style TIFF: tiled level 0, a stripped thumbnail, a 4x-reduced tiled level and a label,
    with the ``Aperio Image Library`` description carrying ``MPP``."""
    h, w = image.shape[:2]
    desc = f"Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = {mpp}"
    options = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(256, 256), compression=compression, description=desc, **options)
        tw.write(np.ascontiguousarray(image[::16, ::16]), compression=compression, description="Aperio Image Library\r\nthumbnail", **options)
        tw.write(np.ascontiguousarray(image[::4, ::4]), tile=(256, 256), compression=compression, description=desc, **options)
        tw.write(np.full((64, 96, 3), 200, np.uint8), compression=compression, description="Aperio Image Library\r\nlabel 96x64",
                 subfiletype=1, **options)
    return path


def write_dicom(source: Path, folder: Path, tile: int = 256) -> Path:
    """A DICOM WSI folder converted from ``source`` by wsidicomizer (read through OpenSlide,
    stored uncompressed, so its pixels are exactly the source's)."""
    from wsidicom.codec import NumpySettings
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.wsidicomizer import SourceIdentifier

    WsiDicomizer.convert(
        source, folder, tile_size=tile, workers=1, encoding=NumpySettings(), preferred_source=SourceIdentifier.OPENSLIDE
    )
    return folder
