"""Stores written directly for tests of the stages that read them."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_prediction(path: Path, mask: np.ndarray, chunk: int = 16) -> Path:
    """A prediction store holding ``mask`` (probability = mask x 255), in predict's OME-NGFF layout
    (:mod:`wsiseg.store.prediction`): probability image at the root, ``labels/mask`` (y, x)."""
    import zarr

    from wsiseg.modelcard import label_names
    from wsiseg.store.chunks import compressor, create_level
    from wsiseg.store.prediction import image_attrs, label_attrs
    from wsiseg.store.pyramid import build_pyramid, level_count

    root = zarr.open_group(path, mode="w", zarr_format=2)
    levels = level_count(*mask.shape, chunk)
    group = root.create_group("labels").create_group("mask")
    create_level(group, "0", mask.shape, chunk, compressor())[:] = mask.astype(np.uint8)
    classes = int(mask.max()) + 1 if mask.max() > 1 else 1  # label values > 1: multi-class, a channel per class
    onehot = (mask > 0)[None] if classes == 1 else mask[None] == np.arange(classes)[:, None, None]
    create_level(root, "0", onehot.shape, chunk, compressor())[:] = onehot.astype(np.uint8) * 255
    build_pyramid(group, levels, chunk, compressor(), "max")
    build_pyramid(root, levels, chunk, compressor(), "mean")
    root["labels"].attrs["labels"] = ["mask"]
    names = label_names(classes)
    group.attrs.update(label_attrs(levels, names))
    root.attrs.update(
        {
            **image_attrs(path.stem, levels, names[1:] if classes == 1 else names),
            "slide_id": path.stem,
            "classes": classes,
        }
    )
    return path
