"""OME-NGFF (v0.4) metadata of the stores wsiseg writes: axes and the ``multiscales`` block, with each level's
scale in micrometres when the pixel size is known.
"""

from __future__ import annotations

NGFF_VERSION = "0.4"
AXES = [
    {"name": "c", "type": "channel"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]
LABEL_AXES = AXES[1:]  # label images: (y, x), no channel axis (a 2-D labels layer in napari)


def multiscales(
    name: str, levels: int, method: str, axes: list[dict] = AXES, mpp: float | None = None, base: float = 1.0
) -> list[dict]:
    """NGFF v0.4 ``multiscales`` metadata for a 2x pyramid of ``levels`` levels with ``axes``
    (:data:`AXES` for images, :data:`LABEL_AXES` for label images).

    With ``mpp`` (the slide's level-0 micrometres per pixel) each level's scale is its pixel size in micrometres;
    without it the spatial axes carry no unit and the scale counts slide level-0 pixels.  ``base``: slide
    level-0 pixels per pixel of this pyramid's level 0 (e.g. a prediction stored at a downscale-2 model's grid)."""
    lead = [1.0] * (len(axes) - 2)
    step = (float(mpp) if mpp else 1.0) * float(base)
    if not mpp:
        axes = [{k: v for k, v in axis.items() if k != "unit"} for axis in axes]
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [{"type": "scale", "scale": [*lead, step * 2.0**k, step * 2.0**k]}],
        }
        for k in range(levels)
    ]
    return [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets, "type": method}]
