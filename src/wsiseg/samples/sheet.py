"""The sample sheet: ``slide_id,image,mask,split`` (CSV), optionally ``group`` and ``mpp``.

``group`` (e.g. the organ in HuBMAP-HPA) is reported: ``metrics.csv`` gets a
mean row per group.  ``mpp`` (micrometres per pixel of the image's level 0)
overrides what the slide's metadata says; empty = use the metadata.  ``mask`` may name a file or, for datasets with one mask
image per object (DSB2018), a folder."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import pandas as pd

from wsiseg.errors import SampleSheetError
from wsiseg.resolution import MAX_MPP, MIN_MPP

COLUMNS = ["slide_id", "image", "mask", "split"]
OPTIONAL = ["group", "mpp"]
SPLITS = ("train", "val", "test")
SLIDE_ID = re.compile(r"[A-Za-z0-9_.-]+")  # workflow/schemas/samples.schema.yaml's slide_id pattern (tested)
ALLOW_SHARED = "allow_shared_images"  # the config key that lets one image file be listed under two splits


def validate_samples(table: pd.DataFrame, source: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Check columns, ids, splits and (optionally) that every image and mask file exists.

    Returns the table with empty masks as ''.  Rows are numbered from 2 in
    messages, as a spreadsheet shows them (row 1 is the header).  Everything
    ``workflow/schemas/samples.schema.yaml`` says is checked here, row by row in
    one pass, so the workflow need not run jsonschema over every row (tested)."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise SampleSheetError(f"{source}: missing column(s) {missing}; expected {COLUMNS}")
    table = table[COLUMNS + [c for c in OPTIONAL if c in table.columns]].fillna("").astype(str)
    for col in table.columns:
        table[col] = table[col].str.strip()
    if table.empty:
        raise SampleSheetError(f"{source}: no slides listed")
    found_masks: set[str] = set()  # one RLE table may annotate every slide: look it up once
    for i, row in enumerate(table.itertuples(index=False), start=2):
        if not row.slide_id:
            raise SampleSheetError(f"{source}: row {i}: empty slide_id")
        if not SLIDE_ID.fullmatch(row.slide_id):
            raise SampleSheetError(
                f"{source}: row {i}: slide_id {row.slide_id!r} may only hold letters, digits, '-', '_', '.'"
            )
        if not row.image:
            raise SampleSheetError(f"{source}: row {i} ({row.slide_id}): empty image")
        if row.split not in SPLITS:
            raise SampleSheetError(
                f"{source}: row {i} ({row.slide_id}): unknown split {row.split!r}; use one of {list(SPLITS)}"
            )
        if getattr(row, "mpp", ""):
            _check_mpp(row.mpp, f"{source}: row {i} ({row.slide_id})")
        if row.split in ("train", "val") and not row.mask:
            raise SampleSheetError(f"{source}: row {i} ({row.slide_id}): a {row.split} slide needs a mask")
        if check_files:
            if not os.path.exists(row.image):  # a file, or a folder (DICOM WSI, MRXS data folder)
                raise SampleSheetError(f"{source}: row {i} ({row.slide_id}): image file not found: {row.image}")
            if row.mask and row.mask not in found_masks:
                if not os.path.exists(row.mask):
                    raise SampleSheetError(f"{source}: row {i} ({row.slide_id}): mask file not found: {row.mask}")
                found_masks.add(row.mask)
    dup = table["slide_id"][table["slide_id"].duplicated()].unique().tolist()
    if dup:
        raise SampleSheetError(f"{source}: duplicate slide_id(s) {dup}")
    return table.set_index("slide_id", drop=False)


def _check_mpp(value: str, where: str) -> None:
    try:
        mpp = float(value)
    except ValueError:
        raise SampleSheetError(f"{where}: mpp {value!r} is not a number (micrometres per pixel, e.g. 0.25)") from None
    if not MIN_MPP <= mpp <= MAX_MPP:  # the plausible range every pixel size is held to
        raise SampleSheetError(
            f"{where}: mpp {value!r} must be {MIN_MPP:g}..{MAX_MPP:g} micrometres per pixel, e.g. 0.25"
        )


def sheet_mpp(samples: pd.DataFrame, slide_id: str) -> float | None:
    """The ``mpp`` the sample sheet gives slide ``slide_id`` (None when the column is absent or empty)."""
    value = samples.loc[slide_id, "mpp"] if "mpp" in samples.columns else ""
    return float(value) if value else None


def sheet_mpps(samples: pd.DataFrame) -> dict[str, float | None]:
    """:func:`sheet_mpp` of every slide at once, as a dict (one pass over the column, O(1) per lookup after)."""
    if "mpp" not in samples.columns:
        return dict.fromkeys(samples.index)
    return {slide: float(value) if value else None for slide, value in samples["mpp"].items()}


def read_samples(path: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Read and validate the sample sheet at ``path`` (paths relative to the working directory)."""
    path = Path(path)
    if not path.is_file():
        raise SampleSheetError(f"{path}: sample sheet not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as err:
        raise SampleSheetError(f"{path}: cannot read sample sheet ({err})") from None
    return validate_samples(table, path, check_files)


def _same_file_key(path: str) -> tuple:
    """What makes two listed images one file: (device, inode) of what ``path`` names (one ``stat``; it
    sees through symlinks, ``..`` and hard links alike), or its normalised absolute path when it cannot
    be read (not written yet, e.g. the demo's slides in a dry run)."""
    try:
        found = os.stat(path)
    except (OSError, ValueError):
        return ("path", os.path.normcase(os.path.abspath(path)))
    return ("file", found.st_dev, found.st_ino)


def shared_images(splits: Mapping[str, str], images: Mapping[str, str], folds: bool = False) -> list[list[str]]:
    """Slide ids that list one image file across the train/evaluation boundary, one list per shared file.

    ``splits`` and ``images`` map slide id to split and image path (the sheet's columns).  Listed under two
    different splits, one file leaks what the model learnt into its validation or test score; with
    ``folds`` (k-fold over the train and val slides) two train/val listings of one file may also land in
    different folds.  One ``stat`` per slide, so 100,000 slides cost well under a second."""
    by_file: dict[tuple, list[str]] = {}
    for slide, image in images.items():
        by_file.setdefault(_same_file_key(image), []).append(slide)
    shared = []
    for ids in by_file.values():
        if len(ids) < 2:
            continue
        kinds = {splits[s] for s in ids}
        pooled = [s for s in ids if splits[s] in ("train", "val")]
        if len(kinds) > 1 or (folds and len(pooled) > 1):
            shared.append(ids)
    return shared


def shared_images_problem(
    splits: Mapping[str, str], images: Mapping[str, str], source: str | Path, folds: bool = False
) -> str | None:
    """One line naming the slides and the file of :func:`shared_images`' first find (and how many more), and
    the config key that allows it; None when no image is shared."""
    shared = shared_images(splits, images, folds)
    if not shared:
        return None
    ids = shared[0]
    listed = ", ".join(f"{s} ({splits[s]})" for s in ids[:4]) + (f" and {len(ids) - 4} more" if len(ids) > 4 else "")
    more = f" ({len(shared) - 1} more image(s) are listed twice)" if len(shared) > 1 else ""
    why = (
        "k-fold (`train.folds`) may put them in different folds"
        if len({splits[s] for s in ids}) == 1
        else "the model would be scored on an image it learnt from"
    )
    return (
        f"{source}: slides {listed} are the same image file {images[ids[0]]}{more}: {why}; "
        f"list each image once, or set `{ALLOW_SHARED}: true` to allow it"
    )
