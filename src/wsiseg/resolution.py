"""Physical pixel size (micrometres per pixel, mpp) of a slide's level 0.

Every reader reports a :class:`PixelSize`: the mpp it found and where it
found it.  :func:`choose` applies the order users expect: a sample-sheet
``mpp`` overrides what the slide says, and ``convert.default_mpp`` serves
slides that say nothing (PNG/JPEG datasets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from wsiseg.errors import ResolutionError

SQUARE_TOLERANCE = 0.01  # relative difference between x and y pixel size still called square
MIN_MPP, MAX_MPP = 0.01, 1000.0  # plausible range: electron-microscopy-like to macro images


@dataclass(frozen=True)
class PixelSize:
    """Micrometres per pixel of level 0 (``mpp``; None when unknown) and where it was read (``source``).

    ``problem``: why metadata that states a pixel size cannot be used (non-square,
    implausible); :func:`choose` raises it unless the sample sheet gives the size."""

    mpp: float | None
    source: str = "unknown"
    problem: str | None = field(default=None, compare=False)

    @property
    def known(self) -> bool:
        """Whether a physical pixel size is known."""
        return self.mpp is not None

    @classmethod
    def from_attrs(cls, attrs: Mapping) -> "PixelSize":
        """The pixel size a store's attributes record (``mpp``, ``mpp_source``: what :meth:`as_dict` wrote)."""
        return cls(attrs["mpp"], attrs.get("mpp_source", "unknown")) if attrs.get("mpp") else UNKNOWN

    def as_dict(self) -> dict:
        """Plain values for JSON attributes: ``{"mpp": float | None, "mpp_source": str}``."""
        return {"mpp": self.mpp, "mpp_source": self.source, **({"mpp_problem": self.problem} if self.problem else {})}

    def __str__(self) -> str:
        return f"{self.mpp:g} um/px ({self.source})" if self.known else "unknown"


UNKNOWN = PixelSize(None, "unknown")


def square(x_um: float, y_um: float, source: str, where: str) -> PixelSize:
    """The pixel size from its x and y extent in micrometres; non-square or implausible values are an error naming ``where``."""
    for value in (x_um, y_um):
        if not math.isfinite(value) or not MIN_MPP <= value <= MAX_MPP:
            raise ResolutionError(
                f"{where}: pixel size {value:g} um from {source} is outside {MIN_MPP:g}..{MAX_MPP:g} um"
            )
    if abs(x_um - y_um) > SQUARE_TOLERANCE * max(x_um, y_um):
        raise ResolutionError(
            f"{where}: non-square pixels ({x_um:g} x {y_um:g} um from {source}); resample the slide to square pixels "
            "or set its `mpp` column in the sample sheet"
        )
    return PixelSize(round((x_um + y_um) / 2, 6), source)


def stated(x_um: float, y_um: float, source: str, where: str) -> PixelSize:
    """:func:`square`, but unusable values come back as an unknown size carrying the ``problem``
    (a sample-sheet ``mpp`` then still wins over them, see :func:`choose`)."""
    try:
        return square(x_um, y_um, source, where)
    except ResolutionError as err:
        return PixelSize(None, source, problem=str(err))


def choose(found: PixelSize, sheet_mpp: float | None = None, default_mpp: float | None = None) -> PixelSize:
    """The pixel size to use: the sample sheet's ``mpp``, else what the slide says, else ``default_mpp``, else unknown.

    Metadata that states an unusable size (``found.problem``) is a :class:`ResolutionError` unless the sheet gives one."""
    if sheet_mpp is not None and not (isinstance(sheet_mpp, float) and math.isnan(sheet_mpp)):
        return PixelSize(float(sheet_mpp), "sample sheet")
    if found.problem:
        raise ResolutionError(found.problem)
    if found.known:
        return found
    if default_mpp is not None:
        return PixelSize(float(default_mpp), "convert.default_mpp")
    return UNKNOWN


# ---------------------------------------------------------------------------
# TIFF metadata (tifffile): OME-XML, Aperio SVS, Philips, Leica SCN, resolution tags

UM_PER_UNIT = {
    "pm": 1e-6,
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "um": 1.0,
    "μm": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}
PLACEHOLDER_DPI = (72.0, 96.0)  # what image editors write when they know nothing about the pixel size
UM_PER_RESUNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre (1 = no unit)


def _xml(text: str):  # -> xml.etree.ElementTree.Element | None
    from xml.etree import ElementTree

    try:
        return ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def ome_pixel_size(xml: str, where: str) -> PixelSize | None:
    """``PhysicalSizeX/Y`` (with their units, micrometre by default) of the first OME ``Pixels`` element."""
    root = _xml(xml)
    pixels = next((e for e in root.iter() if _local(e.tag) == "Pixels"), None) if root is not None else None
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    sizes = []
    for axis in "XY":
        value = float(pixels.attrib.get(f"PhysicalSize{axis}", pixels.attrib["PhysicalSizeX"]))
        unit = pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm")
        if unit not in UM_PER_UNIT:
            raise ResolutionError(f"{where}: OME-XML PhysicalSize{axis}Unit {unit!r} is not a length unit")
        sizes.append(value * UM_PER_UNIT[unit])
    return square(sizes[0], sizes[1], "OME-XML PhysicalSizeX/Y", where)


def aperio_pixel_size(description: str, where: str) -> PixelSize | None:
    """``MPP = 0.2520`` in an Aperio SVS ImageDescription."""
    if not description.startswith("Aperio"):
        return None
    for entry in description.split("|"):
        key, _, value = entry.partition("=")
        if key.strip() == "MPP" and value.strip():
            mpp = float(value)
            return square(mpp, mpp, "Aperio MPP", where)
    return None


def philips_pixel_size(xml: str, where: str) -> PixelSize | None:
    """``DICOM_PIXEL_SPACING`` (millimetres, "row" "column") of the first Philips pixel-data representation."""
    root = _xml(xml)
    if root is None:
        return None
    for attr in root.iter("Attribute"):
        if attr.get("Name") == "DICOM_PIXEL_SPACING" and attr.text:
            values = [float(v.strip('"')) for v in attr.text.split()]
            if len(values) == 2:
                return square(values[1] * 1e3, values[0] * 1e3, "Philips DICOM_PIXEL_SPACING", where)
    return None


def scn_pixel_size(xml: str, where: str) -> PixelSize | None:
    """Leica SCN: the finest ``image`` of the collection (the scan, not the macro photograph): its ``view``
    size (nanometres) over its full-resolution ``dimension`` (pixels)."""
    root = _xml(xml)
    if root is None:
        return None
    found = []
    for image in (e for e in root.iter() if _local(e.tag) == "image"):
        view = next((e for e in image if _local(e.tag) == "view"), None)
        pixels = next((e for e in image if _local(e.tag) == "pixels"), None)
        if view is None or pixels is None or "sizeX" not in view.attrib:
            continue
        dims = [e for e in pixels if _local(e.tag) == "dimension" and "sizeX" in e.attrib]
        if dims:
            full = max(dims, key=lambda d: int(d.get("sizeX")))
            x = float(view.get("sizeX")) / 1e3 / int(full.get("sizeX"))
            y = float(view.get("sizeY")) / 1e3 / int(full.get("sizeY"))
            found.append((x, y))
    if not found:
        return None
    x, y = min(found)
    return square(x, y, "Leica SCN view/dimension", where)


def tag_pixel_size(page, where: str) -> PixelSize | None:
    """TIFF XResolution/YResolution with ResolutionUnit inch or centimetre; None without them, without a
    unit, or for a 72/96-dpi placeholder (what image editors write when they know nothing)."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF's default unit: inch
    if unit not in UM_PER_RESUNIT:
        return None
    x, y = page.get_resolution()
    if x <= 0 or y <= 0:
        return None
    dpi = (x * 2.54, y * 2.54) if unit == 3 else (x, y)
    if any(abs(d - p) < 1e-6 for d in dpi for p in PLACEHOLDER_DPI):
        return None
    per = UM_PER_RESUNIT[unit]
    return square(per / x, per / y, f"TIFF resolution tags ({'inch' if unit == 2 else 'centimetre'})", where)


def tiff_pixel_size(tif, where: str) -> PixelSize:
    """Level 0's pixel size as a TIFF states it, in the issue's order: OME-XML, Aperio ``MPP``, Philips,
    Leica SCN, then resolution tags (Hamamatsu NDPI writes them); :data:`UNKNOWN` when nothing says."""
    page = tif.series[0].levels[0].keyframe if tif.series else tif.pages.first
    readers = (
        (tif.ome_metadata, ome_pixel_size),
        (page.description if tif.is_svs or page.description.startswith("Aperio") else None, aperio_pixel_size),
        (tif.philips_metadata, philips_pixel_size),
        (tif.scn_metadata, scn_pixel_size),
    )
    try:
        for text, read in readers:
            found = read(text, where) if text else None
            if found is not None:
                return found
        return tag_pixel_size(page, where) or UNKNOWN
    except (ValueError, TypeError) as err:
        if isinstance(err, ResolutionError):
            raise
        raise ResolutionError(f"{where}: unreadable pixel size metadata ({err})") from None


def unknown_scale_message(where: str, purpose: str) -> str:
    """The one line for a slide without a pixel size where ``purpose`` needs one: names the two ways to set it."""
    return (
        f"{where}: the slide states no pixel size, but {purpose} needs one: set its `mpp` column in the sample "
        "sheet or `convert.default_mpp` in the config (then convert again)"
    )


def slide_downscale(
    pixel: PixelSize, target_mpp: float | None, downscale: float | None, where: str, purpose: str
) -> float:
    """Level-0 pixels per model pixel for a slide of ``pixel`` size: ``target_mpp / mpp`` at a physical scale,
    else ``downscale`` (slides without a pixel size); an error naming ``where`` when neither applies."""
    if target_mpp is not None and pixel.known:
        return float(target_mpp) / float(pixel.mpp)
    if downscale is not None:
        return float(downscale)
    raise ResolutionError(unknown_scale_message(where, purpose))
