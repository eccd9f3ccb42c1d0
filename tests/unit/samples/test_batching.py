"""Slides per job: groups in sample-sheet order, and the store paths the workflow's rules use."""

from __future__ import annotations

import pytest

from wsiseg.samples.batching import SlideBatches, batch_slides
from wsiseg.store.layout import find_store


def test_groups_keep_sheet_order_and_cover_every_slide_once():
    ids = [f"s{k}" for k in range(7)]
    groups = batch_slides(ids, 3)
    assert groups == {"b0000": ["s0", "s1", "s2"], "b0001": ["s3", "s4", "s5"], "b0002": ["s6"]}
    assert batch_slides(ids, 1)["b0006"] == ["s6"]
    with pytest.raises(ValueError, match="at least 1"):
        batch_slides(ids, 0)


def test_store_paths_one_slide_per_job_and_grouped(tmp_path):
    single = SlideBatches("out", 1, {"zarr": ["a", "b"]})
    assert single.store("zarr", "b") == "out/zarr/b.zarr"
    assert single.job_outputs("zarr", ["a", "b"]) == ["out/zarr/a.zarr", "out/zarr/b.zarr"]
    grouped = SlideBatches(str(tmp_path), 2, {"zarr": ["a", "b", "c"], "patches": ["a", "c"]})
    assert grouped.store("zarr", "c") == f"{tmp_path}/zarr/batches/b0001/c.zarr"
    assert grouped.store("patches", "c") == f"{tmp_path}/patches/batches/b0000/c.zarr"
    assert grouped.job_outputs("zarr", ["a", "b", "c"]) == [
        f"{tmp_path}/zarr/batches/b0000",
        f"{tmp_path}/zarr/batches/b0001",
    ]
    # the report finds a grouped store where the workflow put it
    (tmp_path / "zarr/batches/b0001/c.zarr").mkdir(parents=True)
    assert find_store(tmp_path / "zarr", "c") == tmp_path / "zarr/batches/b0001/c.zarr"
