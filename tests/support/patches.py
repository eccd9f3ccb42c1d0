"""Synthetic patch stores, as ``extract_patches`` writes them, for training tests (no slides needed)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import zarr

SIZE = 64
TINY = dict(encoder_depth=3, decoder_channels=(32, 16, 8), batch_size=8, epochs=1, accelerator="cpu", lr=3e-3)
COLOURS = [(235, 200, 220), (150, 40, 110), (60, 60, 170)]  # background, class 1, class 2


def synthetic_patches(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy patches with one or two discs per image; disc colour = class (labels 0..classes-1)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for k in range(n):
        image = np.full((SIZE, SIZE, 3), COLOURS[0], np.float32)
        for label in rng.integers(1, max(2, classes), size=2):
            centre = tuple(int(v) for v in rng.integers(8, SIZE - 8, size=2))
            cv2.circle(masks[k], centre, int(rng.integers(6, 16)), int(label), -1)
        for label in range(1, max(2, classes)):
            image[masks[k] == label] = COLOURS[label]
        images[k] = np.clip(image + rng.normal(0, 12, image.shape), 0, 255)
    return images, masks


def write_store(path: Path, n: int, classes: int = 1, seed: int = 0) -> Path:
    """A patch store like ``extract_patches`` writes, holding synthetic patches."""
    images, masks = synthetic_patches(n, classes, seed)
    root = zarr.open_group(path, mode="w", zarr_format=2)
    root.create_array("images", data=images, chunks=(1, SIZE, SIZE, 3))
    root.create_array("masks", data=masks, chunks=(1, SIZE, SIZE))
    if classes == 1:  # as extract_patches: the objects' contours, for contour-aware training
        from skimage.measure import label

        from wsiseg.imaging.instances import contour_target

        contours = np.stack([contour_target(label(m > 0, connectivity=2)) for m in masks])
        root.create_array("contours", data=contours, chunks=(1, SIZE, SIZE))
    root.attrs.update({"slide_id": path.stem, "size": SIZE, "downscale": 2.0, "classes": classes})
    return path
