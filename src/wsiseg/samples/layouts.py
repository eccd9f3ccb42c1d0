"""Sample sheets for datasets in their original download layout (``wsiseg samples``).

Formats (``ROOT`` is the dataset folder as downloaded):

- ``hubmap-kidney`` (Kaggle "Hacking the Kidney" 2021): ``train/{id}.tiff``
  with ``train.csv`` (``id,encoding``) or ``train/{id}.json`` polygons, and
  ``test/{id}.tiff`` (unlabelled test slides).
- ``hubmap-hpa`` (Kaggle HuBMAP + HPA 2022): ``train.csv`` (``id,organ,...,
  img_height,img_width,...,rle``) and ``train_images/{id}.tiff``; optional
  ``test.csv`` + ``test_images/``.  The organ becomes the sheet's ``group``
  (per-organ metrics); its ``pixel_size`` column becomes the sheet's ``mpp``.
- ``dsb2018`` (Data Science Bowl 2018 nuclei): ``stage1_train/{id}/images/{id}.png``
  and ``stage1_train/{id}/masks/*.png`` (one PNG per nucleus: the mask is the
  folder); optional ``stage1_test/{id}/images/{id}.png``.
- ``monuseg``: ``.tif`` images with Aperio ``.xml`` annotations of the same
  stem anywhere below ``ROOT`` (``Tissue Images/`` + ``Annotations/``, or side
  by side); images below a folder named ``*test*`` are test slides.
- ``pairs``: ``images/`` and ``masks/`` folders matched by file stem; images
  without a mask are test slides; an optional ``splits.csv`` (``id,split``)
  fixes the split of the ids it lists.
- ``colormap``: the ``pairs`` layout with RGB colour-coded masks; the colours
  found are logged as a palette to paste into ``convert.palette``.

Validation slides are drawn deterministically from the labelled ones not
given a split with ``seed`` (``val_fraction``, at least one).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd

from wsiseg.errors import DatasetLayoutError, SlideError
from wsiseg.readers.registry import open_reader
from wsiseg.samples.sheet import COLUMNS, validate_samples

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".tiff", ".tif", ".svs", ".png", ".jpg", ".jpeg", ".bmp")
HPA_COLUMNS = ["id", "organ", "img_height", "img_width", "rle"]


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


def _sheet(rows: list[list[str]], val_fraction: float, seed: int, columns: list[str] = COLUMNS) -> pd.DataFrame:
    """Sheet from rows ``[slide_id, image, mask, split, ...]`` whose split '' means: draw train/val.

    Nothing is drawn when every labelled row has its split; the sheet must then
    still hold at least one ``train`` and one ``val`` image."""
    pending = [r[0] for r in rows if r[2] and not r[3]]
    splits = assign_splits(pending, val_fraction, seed) if pending else {}
    sheet = pd.DataFrame([[r[0], r[1], r[2], r[3] or splits[r[0]], *r[4:]] for r in rows], columns=columns)
    labelled = sheet[sheet["mask"] != ""]
    if labelled.empty:
        raise DatasetLayoutError(
            "no labelled images (none has a mask): training needs at least one train and one val image"
        )
    for split in ("train", "val"):
        if not (labelled["split"] == split).any():
            raise DatasetLayoutError(
                f"splits.csv: no labelled image is {split!r} (labelled images by split: {labelled['split'].value_counts().to_dict()}); "
                "training needs at least one train and one val image with a mask"
            )
    return sheet


def _read_table(path: Path, required: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: file not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DatasetLayoutError(f"{path}: missing column(s) {missing}; found {list(table.columns)}")
    return table


def hubmap_kidney(root: Path, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Sheet for the HuBMAP kidney layout: RLE from ``train.csv``, else the slide's JSON polygons."""
    train = _images(root / "train")
    if not train:
        raise DatasetLayoutError(f"{root / 'train'}: no slide images")
    table = root / "train.csv"
    encoded = set(_read_table(table, ["id"])["id"]) if table.is_file() else set()
    rows = []
    for slide_id, image in train.items():
        polygons = image.with_suffix(".json")
        if slide_id in encoded:
            mask = table
        elif polygons.is_file():
            mask = polygons
        else:
            raise DatasetLayoutError(f"{image}: no annotation (neither a row in {table} nor {polygons.name})")
        rows.append([slide_id, str(image), str(mask), ""])
    test = root / "test"
    if test.is_dir():
        rows += [[slide_id, str(image), "", "test"] for slide_id, image in _images(test).items()]
    return _sheet(rows, val_fraction, seed)


def _image_shape(path: Path) -> tuple[int, int]:
    try:
        reader, tif = open_reader(path)
    except SlideError as err:
        raise DatasetLayoutError(str(err)) from None
    if tif is not None:
        tif.close()
    return tuple(int(v) for v in reader.shape)


def hubmap_hpa(root: Path, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Sheet for HuBMAP + HPA 2022: ``train.csv`` RLE rows, ``train_images/{id}.tiff``, organ as ``group``,
    the table's ``pixel_size`` (um/px; it differs between organs and sources) as ``mpp``.

    Each image's size is checked against ``img_height``/``img_width``."""
    table_path = root / "train.csv"
    table = _read_table(table_path, HPA_COLUMNS)
    images = _images(root / "train_images")
    orphans = sorted(set(images) - set(table["id"]))
    if orphans:
        raise DatasetLayoutError(f"{root / 'train_images'}: image(s) without annotation in {table_path}: {orphans[:5]}")
    rows = []
    for r in table.itertuples(index=False):
        if r.id not in images:
            raise DatasetLayoutError(
                f"{table_path}: id {r.id}: image {root / 'train_images' / (r.id + '.tiff')} not found"
            )
        shape, listed = _image_shape(images[r.id]), (int(r.img_height), int(r.img_width))
        if shape != listed:
            raise DatasetLayoutError(
                f"{images[r.id]}: image is {shape[0]}x{shape[1]} (HxW) but {table_path} lists {listed[0]}x{listed[1]}"
            )
        rows.append([r.id, str(images[r.id]), str(table_path), "", r.organ, getattr(r, "pixel_size", "")])
    test_table = root / "test.csv"
    if test_table.is_file():
        tests = _images(root / "test_images")
        for r in _read_table(test_table, ["id", "organ"]).itertuples(index=False):
            if r.id not in tests:
                raise DatasetLayoutError(f"{test_table}: id {r.id}: no image in {root / 'test_images'}")
            rows.append([r.id, str(tests[r.id]), "", "test", r.organ, getattr(r, "pixel_size", "")])
    return _sheet(rows, val_fraction, seed, COLUMNS + ["group", "mpp"])


def _dsb_image(folder: Path) -> Path:
    image = folder / "images" / f"{folder.name}.png"
    if not image.is_file():
        raise DatasetLayoutError(f"{folder}: expected the image {image.relative_to(folder)}")
    return image


def dsb2018(root: Path, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Sheet for DSB2018: one folder per image; its ``masks/`` folder (one PNG per nucleus) is the mask."""
    train = root / "stage1_train"
    if not train.is_dir():
        raise DatasetLayoutError(f"{train}: folder not found (expected stage1_train/{{id}}/images, masks)")
    rows = []
    for folder in sorted(p for p in train.iterdir() if p.is_dir()):
        masks = folder / "masks"
        if not masks.is_dir() or not any(p.suffix.lower() == ".png" for p in masks.iterdir()):
            raise DatasetLayoutError(f"{folder}: missing masks folder with one PNG per nucleus ({masks})")
        rows.append([folder.name, str(_dsb_image(folder)), str(masks), ""])
    if not rows:
        raise DatasetLayoutError(f"{train}: no image folders")
    for test in ("stage1_test", "stage2_test_final"):
        if (root / test).is_dir():
            rows += [[p.name, str(_dsb_image(p)), "", "test"] for p in sorted((root / test).iterdir()) if p.is_dir()]
    return _sheet(rows, val_fraction, seed)


def _by_stem(files: list[Path], root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in files:
        if path.stem in found:
            raise DatasetLayoutError(f"{root}: two files with the stem {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def monuseg(root: Path, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Sheet for MoNuSeg: ``.tif`` images and Aperio ``.xml`` annotations matched by stem below ``root``."""
    images = _by_stem(sorted(p for p in root.rglob("*") if p.suffix.lower() in (".tif", ".tiff")), root)
    annotations = _by_stem(sorted(root.rglob("*.xml")), root)
    if not images:
        raise DatasetLayoutError(f"{root}: no .tif images found")
    rows = []
    for stem, image in images.items():
        if stem not in annotations:
            raise DatasetLayoutError(f"{image}: image without annotation (no {stem}.xml below {root})")
        is_test = any("test" in part.lower() for part in image.relative_to(root).parts[:-1])
        rows.append([stem, str(image), str(annotations[stem]), "test" if is_test else ""])
    return _sheet(rows, val_fraction, seed)


def pairs(root: Path, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Sheet for ``images/`` + ``masks/`` matched by stem; images without a mask become test slides.

    ``splits.csv`` (``id,split``) in ``root``, if present, fixes the split of the ids it lists."""
    images, masks = _images(root / "images"), _images(root / "masks")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DatasetLayoutError(f"{root / 'masks'}: masks without an image: {orphans[:5]}")
    fixed: dict[str, str] = {}
    if (root / "splits.csv").is_file():
        table = _read_table(root / "splits.csv", ["id", "split"])
        unknown = sorted(set(table["id"]) - set(images))
        if unknown:
            raise DatasetLayoutError(
                f"{root / 'splits.csv'}: id(s) without an image in {root / 'images'}: {unknown[:5]}"
            )
        fixed = dict(zip(table["id"], table["split"].str.strip()))
    rows = [
        [s, str(p), str(masks[s]) if s in masks else "", fixed.get(s, "" if s in masks else "test")]
        for s, p in images.items()
    ]
    return _sheet(rows, val_fraction, seed)


def mask_colours(paths: list[Path], limit: int = 50) -> dict[str, int]:
    """Pixel count per ``#rrggbb`` colour over (at most ``limit`` of) the RGB mask images ``paths``."""
    counts: dict[str, int] = {}
    for path in paths[:limit]:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetLayoutError(f"{path}: cannot read mask image")
        packed = (image[:, :, 2].astype(np.uint32) << 16) | (image[:, :, 1].astype(np.uint32) << 8) | image[:, :, 0]
        for colour, n in zip(*np.unique(packed, return_counts=True)):
            key = f"#{int(colour):06x}"
            counts[key] = counts.get(key, 0) + int(n)
    return counts


def colormap(root: Path, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """The ``pairs`` layout with RGB colour-coded masks; logs the colours found as a palette suggestion."""
    table = pairs(root, val_fraction, seed)
    colours = mask_colours([Path(m) for m in table["mask"] if m])
    palette = {c: i for i, c in enumerate((c for c in sorted(colours) if c != "#000000"), start=1)}
    log.info("colours in the masks (pixels): %s", json.dumps(colours))
    log.info("palette suggestion for convert.palette (black = class 0): %s", json.dumps(palette))
    return table


FORMATS: dict[str, Callable[[Path, float, int], pd.DataFrame]] = {
    "hubmap-kidney": hubmap_kidney,
    "hubmap-hpa": hubmap_hpa,
    "dsb2018": dsb2018,
    "monuseg": monuseg,
    "pairs": pairs,
    "colormap": colormap,
}


LAYOUTS = {  # one line per format, for `wsiseg samples --help`
    "hubmap-kidney": "train/{id}.tiff + train.csv (id,encoding) or train/{id}.json, test/{id}.tiff",
    "hubmap-hpa": "train.csv (id,organ,...,img_height,img_width,...,rle) + train_images/{id}.tiff; organ = group",
    "dsb2018": "stage1_train/{id}/images/{id}.png + stage1_train/{id}/masks/*.png (one per nucleus), stage1_test/",
    "monuseg": ".tif images + Aperio .xml of the same name below ROOT; folders named *test* hold test slides",
    "pairs": "images/ + masks/ matched by file stem, optional splits.csv (id,split)",
    "colormap": "as pairs, RGB colour-coded masks (the colours found are logged as a palette)",
}


def dataset_samples(fmt: str, root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """The validated sample sheet for dataset ``root`` in layout ``fmt`` (see :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise DatasetLayoutError(f"unknown dataset format {fmt!r}; choose from {list(FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: dataset folder not found")
    table = FORMATS[fmt](root, val_fraction, seed)
    return validate_samples(table, root, check_files=True).reset_index(drop=True)
