"""Physical pixel size (micrometres per pixel, mpp) of a slide's level 0.

Every reader reports a :class:`PixelSize`: the mpp it found and where it
found it.  :func:`choose` applies the order users expect: a sample-sheet
``mpp`` overrides what the slide says, and ``convert.default_mpp`` serves
slides that say nothing (PNG/JPEG datasets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SQUARE_TOLERANCE = 0.01  # relative difference between x and y pixel size still called square
MIN_MPP, MAX_MPP = 0.01, 1000.0  # plausible range: electron-microscopy-like to macro images


class ResolutionError(ValueError):
    """A pixel size that cannot be used: non-square, zero, negative or absurd."""


@dataclass(frozen=True)
class PixelSize:
    """Micrometres per pixel of level 0 (``mpp``; None when unknown) and where it was read (``source``)."""

    mpp: float | None
    source: str = "unknown"

    @property
    def known(self) -> bool:
        """Whether a physical pixel size is known."""
        return self.mpp is not None

    def as_dict(self) -> dict:
        """Plain values for JSON attributes: ``{"mpp": float | None, "mpp_source": str}``."""
        return {"mpp": self.mpp, "mpp_source": self.source}

    def __str__(self) -> str:
        return f"{self.mpp:g} um/px ({self.source})" if self.known else "unknown"


UNKNOWN = PixelSize(None, "unknown")


def square(x_um: float, y_um: float, source: str, where: str) -> PixelSize:
    """The pixel size from its x and y extent in micrometres; non-square or implausible values are an error naming ``where``."""
    for value in (x_um, y_um):
        if not math.isfinite(value) or not MIN_MPP <= value <= MAX_MPP:
            raise ResolutionError(f"{where}: pixel size {value:g} um from {source} is outside {MIN_MPP:g}..{MAX_MPP:g} um")
    if abs(x_um - y_um) > SQUARE_TOLERANCE * max(x_um, y_um):
        raise ResolutionError(
            f"{where}: non-square pixels ({x_um:g} x {y_um:g} um from {source}); resample the slide to square pixels "
            "or set its `mpp` column in the sample sheet"
        )
    return PixelSize(round((x_um + y_um) / 2, 6), source)


def choose(found: PixelSize, sheet_mpp: float | None = None, default_mpp: float | None = None) -> PixelSize:
    """The pixel size to use: the sample sheet's ``mpp``, else what the slide says, else ``default_mpp``, else unknown."""
    if sheet_mpp is not None and not (isinstance(sheet_mpp, float) and math.isnan(sheet_mpp)):
        return PixelSize(float(sheet_mpp), "sample sheet")
    if found.known:
        return found
    if default_mpp is not None:
        return PixelSize(float(default_mpp), "convert.default_mpp")
    return UNKNOWN
