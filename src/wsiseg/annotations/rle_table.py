"""Kaggle RLE tables (CSV with ``id`` and ``encoding``/``rle``/``predicted`` columns) as annotation sources."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pandas as pd

from wsiseg import rle
from wsiseg.annotations.base import BINARY, Block
from wsiseg.errors import MaskError

RLE_COLUMNS = ("encoding", "rle", "predicted")


class RLETableMask:
    """One row of a Kaggle ``id,encoding`` table; decoded in full-height column bands."""

    def __init__(self, path: Path, slide_id: str, shape: tuple[int, int]):
        self.path, self.shape, self.classes = path, shape, BINARY
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as err:
            raise MaskError(f"{path}: cannot read RLE table ({err})") from None
        column = next((c for c in RLE_COLUMNS if c in table.columns), None)
        if "id" not in table.columns or column is None:
            raise MaskError(f"{path}: RLE table needs columns 'id' and 'encoding', found {list(table.columns)}")
        rows = table.loc[table["id"] == slide_id, column]
        if rows.empty:
            raise MaskError(f"{path}: no row with id '{slide_id}'")
        if len(rows) > 1:
            raise MaskError(f"{path}: {len(rows)} rows with id '{slide_id}'")
        try:
            self.starts, self.lengths = rle.parse(rows.iloc[0], shape, source=f"{path} (id {slide_id})")
        except rle.RLEError as err:
            raise MaskError(str(err)) from None
        self.empty = len(self.starts) == 0
        self.found = f"the row for id '{slide_id}' has {len(self.starts)} run(s)"

    def blocks(self, chunk: int) -> Iterator[Block]:
        height, width = self.shape
        for x0 in range(0, width, chunk):
            x1 = min(width, x0 + chunk)
            yield 0, x0, rle.decode_band(self.starts, self.lengths, height, x0, x1)
