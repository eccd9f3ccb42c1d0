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
    base = np.stack(
        [128 + 100 * np.sin(xx / 37.0), 128 + 100 * np.cos(yy / 23.0), 128 + 60 * np.sin((xx + yy) / 51.0)], -1
    )
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def write_svs(path: Path, image: np.ndarray, mpp: float = SVS_MPP, compression: str = "jpeg") -> Path:
    """An Aperio SVS-style TIFF: tiled level 0, a stripped thumbnail, a 4x-reduced tiled level and a label,
    with the ``Aperio Image Library`` description carrying ``MPP``."""
    h, w = image.shape[:2]
    desc = f"Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90|AppMag = 20|MPP = {mpp}"
    options = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(256, 256), compression=compression, description=desc, **options)
        tw.write(
            np.ascontiguousarray(image[::16, ::16]),
            compression=compression,
            description="Aperio Image Library\r\nthumbnail",
            **options,
        )
        tw.write(
            np.ascontiguousarray(image[::4, ::4]), tile=(256, 256), compression=compression, description=desc, **options
        )
        tw.write(
            np.full((64, 96, 3), 200, np.uint8),
            compression=compression,
            description="Aperio Image Library\r\nlabel 96x64",
            subfiletype=1,
            **options,
        )
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


def _philips_xml(spacings_mm: list[float]) -> str:
    """The ``DPUfsImport`` XML description of a Philips TIFF: pixel spacing of level 0 and one
    pixel data representation per level (OpenSlide takes the level downsamples from them)."""

    def attribute(name: str, group: str, element: str, kind: str, value) -> str:
        return f'<Attribute Name="{name}" Group="{group}" Element="{element}" PMSVR="{kind}">{value}</Attribute>'

    def spacing(mm: float) -> str:
        return attribute(
            "DICOM_PIXEL_SPACING", "0x0028", "0x0030", "IDoubleArray", f"&quot;{mm}&quot; &quot;{mm}&quot;"
        )

    representations = "".join(
        f'<DataObject ObjectType="PixelDataRepresentation">{spacing(mm)}'
        f"{attribute('PIIM_PIXEL_DATA_REPRESENTATION_NUMBER', '0x1001', '0x8B02', 'IUInt16', n)}</DataObject>"
        for n, mm in enumerate(spacings_mm)
    )
    image = (
        '<DataObject ObjectType="DPScannedImage">'
        + attribute("PIM_DP_IMAGE_TYPE", "0x301D", "0x1004", "IString", "WSI")
        + spacing(spacings_mm[0])
        + attribute(
            "PIIM_PIXEL_DATA_REPRESENTATION_SEQUENCE",
            "0x1001",
            "0x8B01",
            "IDataObjectArray",
            f"<Array>{representations}</Array>",
        )
        + "</DataObject>"
    )
    scanned = attribute("PIM_DP_SCANNED_IMAGES", "0x301D", "0x1003", "IDataObjectArray", f"<Array>{image}</Array>")
    return f'<?xml version="1.0" encoding="UTF-8" ?>\n<DataObject ObjectType="DPUfsImport">{scanned}</DataObject>\n'


def write_philips(path: Path, image: np.ndarray, mpp: float = SVS_MPP) -> Path:
    """A Philips TIFF (the vendor format OpenSlide's philips driver reads): JPEG tiles, level 0 and a
    2x-reduced level, ``Philips`` software tag and the ``DPUfsImport`` XML description."""
    options = {
        "tile": (256, 256),
        "compression": "jpeg",
        "photometric": "rgb",
        "metadata": None,
        "software": "Philips DP v1.0",
    }
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, description=_philips_xml([mpp / 1000, mpp / 500]), **options)
        tw.write(np.ascontiguousarray(image[::2, ::2]), subfiletype=1, **options)
    return path
