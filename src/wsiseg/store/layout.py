"""Where a stage's stores lie in its results folder (shared by the workflow and ``wsiseg report``)."""

from __future__ import annotations

from pathlib import Path

SLIDE_GROUPS = "batches"  # one folder per slide group, when the workflow runs several slides per job


def find_store(folder: str | Path, slide_id: str) -> Path | None:
    """``folder/{slide_id}.zarr``, or the same inside a slide group (``folder/batches/*/``); None if absent."""
    direct = Path(folder) / f"{slide_id}.zarr"
    if direct.exists():
        return direct
    return next(iter(sorted(Path(folder).glob(f"{SLIDE_GROUPS}/*/{slide_id}.zarr"))), None)
