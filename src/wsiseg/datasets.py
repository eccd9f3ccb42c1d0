"""Sample sheets for datasets in their original download layout (``wsiseg samples``).

Formats so far:

- ``hubmap-kidney`` (Kaggle "Hacking the Kidney"): ``train/{id}.tiff`` with
  ``train.csv`` (``id,encoding``) or ``train/{id}.json`` polygons, and
  ``test/{id}.tiff`` (unlabelled test slides).
- ``pairs``: ``images/`` and ``masks/`` folders matched by file stem.

Validation slides are drawn deterministically from the labelled ones with
``seed`` (``val_fraction``, at least one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .samples import COLUMNS, validate_samples

IMAGE_SUFFIXES = (".tiff", ".tif", ".svs", ".png", ".jpg", ".jpeg")
FORMATS = ("hubmap-kidney", "pairs")


class DatasetLayoutError(ValueError):
    """A dataset folder that does not have the expected layout; the message names the path."""


def _images(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetLayoutError(f"{folder}: folder not found")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}


def assign_splits(ids: list[str], val_fraction: float, seed: int) -> dict[str, str]:
    """``train``/``val`` per labelled id: a seeded, order-independent draw of at least one val slide."""
    ordered = sorted(ids)
    if len(ordered) < 2:
        raise DatasetLayoutError(f"need at least 2 labelled images for a train/val split, found {len(ordered)}")
    count = min(len(ordered) - 1, max(1, int(round(val_fraction * len(ordered)))))
    val = set(np.random.default_rng(seed).choice(ordered, size=count, replace=False).tolist())
    return {i: "val" if i in val else "train" for i in ordered}


def hubmap_kidney(root: Path, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Sheet for the HuBMAP kidney layout: RLE from ``train.csv``, else the slide's JSON polygons."""
    train = _images(root / "train")
    if not train:
        raise DatasetLayoutError(f"{root / 'train'}: no slide images")
    table = root / "train.csv"
    encoded = set(pd.read_csv(table, dtype=str)["id"]) if table.is_file() else set()
    rows = []
    for slide_id, image in train.items():
        polygons = image.with_suffix(".json")
        if slide_id in encoded:
            mask = table
        elif polygons.is_file():
            mask = polygons
        else:
            raise DatasetLayoutError(f"{image}: no annotation (neither a row in {table} nor {polygons.name})")
        rows.append([slide_id, str(image), str(mask)])
    splits = assign_splits([r[0] for r in rows], val_fraction, seed)
    rows = [r + [splits[r[0]]] for r in rows]
    test = root / "test"
    if test.is_dir():
        rows += [[slide_id, str(image), "", "test"] for slide_id, image in _images(test).items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def pairs(root: Path, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Sheet for ``images/`` + ``masks/`` matched by stem; images without a mask become test slides."""
    images, masks = _images(root / "images"), _images(root / "masks")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DatasetLayoutError(f"{root / 'masks'}: masks without an image: {orphans[:5]}")
    splits = assign_splits([s for s in images if s in masks], val_fraction, seed)
    rows = [[s, str(p), str(masks[s]) if s in masks else "", splits.get(s, "test")] for s, p in images.items()]
    return pd.DataFrame(rows, columns=COLUMNS)


def dataset_samples(fmt: str, root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """The validated sample sheet for dataset ``root`` in layout ``fmt`` (see :data:`FORMATS`)."""
    builders = {"hubmap-kidney": hubmap_kidney, "pairs": pairs}
    if fmt not in builders:
        raise DatasetLayoutError(f"unknown dataset format {fmt!r}; choose from {list(FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: dataset folder not found")
    table = builders[fmt](root, val_fraction, seed)
    return validate_samples(table, root, check_files=True).reset_index(drop=True)
