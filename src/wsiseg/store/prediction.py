"""Prediction stores: the OME-NGFF layout :func:`wsiseg.predict.predict_slide` writes, and its reader.

Layout of ``{slide}.zarr`` (zarr format 2, OME-NGFF v0.4)::

    0, 1, 2, ...          the probability pyramid x 255 (uint8), axes (c, y, x): the store's
                          multiscale image, one channel per class (binary models: one
                          foreground channel), channels named in ``omero``
    labels/mask/0, 1, ... the mask, axes (y, x): an NGFF image-label (binary 0/1, or the
                          arg-max class index) with ``colors`` and ``properties`` (``class``:
                          the name of each label value)

The mask pyramid has the slide store's level-0 size and 2x levels.  The
probability pyramid starts at the model's grid (``prob_downscale`` slide
pixels per probability pixel: the downscale the model read the slide at, 1
when it read level 0 or finer): a downscale-4 model's probabilities hold no
more at level 0 than on their own grid, and storing them there costs 1/16.
Both NGFF scales say so, so viewers (napari with napari-ome-zarr,
ome-zarr-py) overlay them on the slide; :meth:`Prediction.probabilities`
resamples them onto a mask level (linearly, as the mask was made).  Root
attributes: ``slide_id``, ``classes``, ``class_names``, ``downscale``, ``prob_downscale``,
``tile``, ``overlap``, ``threshold``, ``tta``, ``tissue`` and ``provenance``
(model checkpoints with sha256, model cards, config hash, wsiseg version).
Stores written before this layout (``prob/`` and ``mask/`` groups, axes
(c, y, x)) are read too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import zarr

from wsiseg.errors import StoreError
from wsiseg.modelcard import label_colour, wsiseg_version
from wsiseg.store.chunks import read_plane
from wsiseg.store.ngff import LABEL_AXES, NGFF_VERSION, multiscales
from wsiseg.utils.io import atomic_path


def image_attrs(
    name: str,
    levels: int,
    channels: Sequence[str],
    mpp: float | None = None,
    base: float = 1.0,
    binary: bool | None = None,
) -> dict:
    """NGFF ``multiscales`` (micrometre scales with ``mpp``, the slide's level-0 pixel size; ``base`` slide pixels
    per probability pixel) and ``omero`` attributes of the probability image (uint8, one channel per name).
    ``binary``: the channels are independent probabilities (a foreground, and a contour-aware model's contour),
    all shown; default: when there is one channel (else channel c is class c, 0 = background, hidden)."""
    binary = len(channels) == 1 if binary is None else binary
    omero = [
        {
            "label": channel,
            "color": "%02X%02X%02X" % (label_colour(c + 1) if binary else label_colour(c) if c else (128, 128, 128)),
            "active": binary or c > 0,
            "window": {"start": 0, "end": 255, "min": 0, "max": 255},
        }
        for c, channel in enumerate(channels)
    ]
    return {
        "multiscales": multiscales(name, levels, "mean", mpp=mpp, base=base),
        "omero": {"version": NGFF_VERSION, "name": name, "channels": omero},
    }


def label_attrs(levels: int, names: Sequence[str], mpp: float | None = None) -> dict:
    """NGFF ``multiscales`` and ``image-label`` attributes of the (y, x) mask whose label values are
    0..len(names)-1: ``colors`` (0 transparent) and ``properties`` (``class``: the name)."""
    colors = [{"label-value": 0, "rgba": [0, 0, 0, 0]}]
    colors += [{"label-value": v, "rgba": [*label_colour(v), 200]} for v in range(1, len(names))]
    properties = [{"label-value": v, "class": name} for v, name in enumerate(names)]
    return {
        "multiscales": multiscales("mask", levels, "max", LABEL_AXES, mpp),
        "image-label": {
            "version": NGFF_VERSION,
            "colors": colors,
            "properties": properties,
            "source": {"image": "../../"},
        },
    }


class Prediction:
    """Read access to a prediction store (see the module docstring; older ``prob``/``mask`` stores too)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            root = zarr.open_group(self.path, mode="r")
            if "labels" in root and "mask" in root["labels"]:
                masks, probs = root["labels/mask"], root
            else:  # stores written before the NGFF layout
                masks, probs = root["mask"], root["prob"]
            self.mask_levels = [masks[d["path"]] for d in masks.attrs["multiscales"][0]["datasets"]]
            self.prob_levels = [probs[d["path"]] for d in probs.attrs["multiscales"][0]["datasets"]]
        except Exception as err:
            raise StoreError(f"{self.path}: not a wsiseg prediction store ({err})") from None
        self.attrs = dict(root.attrs)
        self.height, self.width = self.mask_levels[0].shape[-2:]
        self.prob_scale = float(self.attrs.get("prob_downscale", 1.0))  # slide pixels per level-0 probability pixel

    @property
    def mask(self) -> zarr.Array:
        """Level-0 mask array ((y, x); (1, y, x) in older stores: read it with :meth:`mask_plane`)."""
        return self.mask_levels[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) at level 0: the slide store's."""
        return self.height, self.width

    def mask_plane(self, k: int = 0, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        """(h, w) labels of ``rows, cols`` of pyramid level ``k``."""
        return read_plane(self.mask_levels[k], rows, cols)

    def probabilities(self, k: int = 0) -> np.ndarray:
        """Probabilities 0..1, float32 (channels, h, w), on the grid of mask level ``k``.

        Read from the finest probability level not finer than mask level ``k`` and resized
        (linearly, with the same pixel mapping the predict stage used to make the mask)."""
        target = 2.0**k  # slide pixels per pixel of mask level k
        j = 0
        while j + 1 < len(self.prob_levels) and self.prob_scale * 2.0 ** (j + 1) <= target + 1e-9:
            j += 1
        prob = np.asarray(self.prob_levels[j][:], np.float32) / 255.0
        h, w = (
            self.mask_levels[k].shape[-2:]
            if k < len(self.mask_levels)
            else (-(-self.height // 2**k), -(-self.width // 2**k))
        )
        factor = self.prob_scale * 2.0**j / target
        if factor == 1:
            return _fit(prob, h, w)
        size = (int(round(prob.shape[2] * factor)), int(round(prob.shape[1] * factor)))
        resized = [
            cv2.resize(plane, size, interpolation=cv2.INTER_LINEAR if factor > 1 else cv2.INTER_AREA) for plane in prob
        ]
        return _fit(np.stack(resized), h, w)

    def level_for(self, max_side: int) -> int:
        """Finest pyramid level whose longer side is at most ``max_side``."""
        k = 0
        while k + 1 < len(self.mask_levels) and max(self.mask_levels[k].shape[-2:]) > max_side:
            k += 1
        return k

    @property
    def provenance(self) -> dict:
        """What made the prediction: ``checkpoints`` (path, sha256), ``model_cards``, ``config_hash``,
        ``wsiseg_version`` (empty for stores that do not record it)."""
        return dict(self.attrs.get("provenance") or {})


def _fit(planes: np.ndarray, h: int, w: int) -> np.ndarray:
    """(c, h, w): ``planes`` cropped, or padded with their edge values, to ``h`` x ``w``."""
    planes = planes[:, :h, :w]
    pad = ((0, 0), (0, h - planes.shape[1]), (0, w - planes.shape[2]))
    return np.pad(planes, pad, mode="edge") if any(p[1] for p in pad) else planes


def write_provenance(predictions: Mapping[str, str | Path], out: str | Path, config_hash: str | None = None) -> dict:
    """Write ``out`` (JSON): the models (sha256), config hashes and wsiseg versions that made ``predictions``
    (slide id -> prediction store), per slide and as the set over all, and the report's own ``config_hash``
    and version.  Returns the record."""
    slides, models, hashes, versions = {}, {}, set(), set()
    for slide_id in sorted(predictions):
        made = Prediction(predictions[slide_id]).provenance
        sums = [c["sha256"] for c in made.get("checkpoints", [])]
        for entry in made.get("checkpoints", []):
            models.setdefault(entry["sha256"], entry["path"])
        slides[slide_id] = {
            "models": sums,
            "config_hash": made.get("config_hash"),
            "wsiseg_version": made.get("wsiseg_version"),
        }
        hashes.add(made.get("config_hash"))
        versions.add(made.get("wsiseg_version"))
    record = {
        "wsiseg_version": wsiseg_version(),
        "config_hash": config_hash,
        "models": [{"sha256": s, "path": p} for s, p in models.items()],
        "prediction_config_hashes": sorted(h for h in hashes if h),
        "prediction_wsiseg_versions": sorted(v for v in versions if v),
        "slides": slides,
    }
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return record
