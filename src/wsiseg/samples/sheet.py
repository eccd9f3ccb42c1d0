"""The sample sheet: ``slide_id,image,mask,split`` (CSV), optionally ``group`` and ``mpp``.

``group`` (e.g. the organ in HuBMAP-HPA) is reported: ``metrics.csv`` gets a
mean row per group.  ``mpp`` (micrometres per pixel of the image's level 0)
overrides what the slide's metadata says; empty = use the metadata.  ``mask`` may name a file or, for datasets with one mask
image per object (DSB2018), a folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wsiseg.errors import SampleSheetError
from wsiseg.resolution import MAX_MPP, MIN_MPP

COLUMNS = ["slide_id", "image", "mask", "split"]
OPTIONAL = ["group", "mpp"]
SPLITS = ("train", "val", "test")


def validate_samples(table: pd.DataFrame, source: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Check columns, ids, splits and (optionally) that every image and mask file exists.

    Returns the table with empty masks as ''.  Rows are numbered from 2 in
    messages, as a spreadsheet shows them (row 1 is the header)."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise SampleSheetError(f"{source}: missing column(s) {missing}; expected {COLUMNS}")
    table = table[COLUMNS + [c for c in OPTIONAL if c in table.columns]].fillna("").astype(str)
    for col in table.columns:
        table[col] = table[col].str.strip()
    if table.empty:
        raise SampleSheetError(f"{source}: no slides listed")
    for i, row in enumerate(table.itertuples(index=False), start=2):
        if not row.slide_id:
            raise SampleSheetError(f"{source}: row {i}: empty slide_id")
        if not row.slide_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise SampleSheetError(
                f"{source}: row {i}: slide_id {row.slide_id!r} may only hold letters, digits, '-', '_', '.'"
            )
        if row.split not in SPLITS:
            raise SampleSheetError(
                f"{source}: row {i} ({row.slide_id}): unknown split {row.split!r}; use one of {list(SPLITS)}"
            )
        if getattr(row, "mpp", ""):
            _check_mpp(row.mpp, f"{source}: row {i} ({row.slide_id})")
        if row.split in ("train", "val") and not row.mask:
            raise SampleSheetError(f"{source}: row {i} ({row.slide_id}): a {row.split} slide needs a mask")
        if check_files:
            if not Path(row.image).exists():  # a file, or a folder (DICOM WSI, MRXS data folder)
                raise SampleSheetError(f"{source}: row {i} ({row.slide_id}): image file not found: {row.image}")
            if row.mask and not Path(row.mask).exists():
                raise SampleSheetError(f"{source}: row {i} ({row.slide_id}): mask file not found: {row.mask}")
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
