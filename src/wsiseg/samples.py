"""The sample sheet: ``slide_id,image,mask,split`` (CSV), optionally ``group``.

``group`` (e.g. the organ in HuBMAP-HPA) is reported: ``metrics.csv`` gets a
mean row per group.  ``mask`` may name a file or, for datasets with one mask
image per object (DSB2018), a folder."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMNS = ["slide_id", "image", "mask", "split"]
OPTIONAL = ["group"]
SPLITS = ("train", "val", "test")


class SampleSheetError(ValueError):
    """A sample sheet that cannot be used; the message names the file and row."""


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
            raise SampleSheetError(f"{source}: row {i}: slide_id {row.slide_id!r} may only hold letters, digits, '-', '_', '.'")
        if row.split not in SPLITS:
            raise SampleSheetError(f"{source}: row {i} ({row.slide_id}): unknown split {row.split!r}; use one of {list(SPLITS)}")
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
