"""One image file listed as a train (or val) and as a test slide leaks what the model learnt into its score:
the dry run refuses it in one line naming the slides, the file and the config key that allows it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wsiseg.samples.sheet import ALLOW_SHARED, shared_images, shared_images_problem


@pytest.fixture
def files(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("a.tif", "b.tif", "c.tif"):
        (tmp_path / name).write_bytes(b"II*\0" + name.encode())
    return tmp_path


def _problem(rows: dict[str, tuple[str, str]], folds: bool = False) -> str | None:
    splits = {s: split for s, (split, _) in rows.items()}
    images = {s: image for s, (_, image) in rows.items()}
    return shared_images_problem(splits, images, "sheet.csv", folds=folds)


def test_one_file_as_train_and_test_is_one_line_naming_slides_file_and_key(files):
    problem = _problem({"x": ("train", "a.tif"), "y": ("val", "b.tif"), "z": ("test", "a.tif")})
    assert problem == (
        "sheet.csv: slides x (train), z (test) are the same image file a.tif: the model would be scored on an "
        f"image it learnt from; list each image once, or set `{ALLOW_SHARED}: true` to allow it"
    )
    assert ALLOW_SHARED == "allow_shared_images"


@pytest.mark.parametrize("spelling", ["./a.tif", "{root}/a.tif", "sub/../a.tif", "link.tif", "hard.tif"])
def test_the_same_file_under_another_name_is_found(files, spelling):
    (files / "sub").mkdir()
    (files / "link.tif").symlink_to(files / "a.tif")
    os.link(files / "a.tif", files / "hard.tif")
    rows = {"x": ("train", "a.tif"), "z": ("test", spelling.format(root=files))}
    assert shared_images({s: v[0] for s, v in rows.items()}, {s: v[1] for s, v in rows.items()}) == [["x", "z"]]


def test_distinct_files_and_listings_within_one_split_are_fine(files):
    (files / "copy.tif").write_bytes((files / "a.tif").read_bytes())  # same bytes, another file: not compared
    rows = {
        "x": ("train", "a.tif"),
        "y": ("test", "copy.tif"),
        "t1": ("test", "c.tif"),
        "t2": ("test", "c.tif"),  # predicted twice, learnt from never
        "v1": ("train", "b.tif"),
        "v2": ("train", "b.tif"),  # weighted twice in training, scored never
    }
    assert _problem(rows) is None


def test_with_k_fold_two_train_val_listings_of_one_file_may_land_in_two_folds(files):
    rows = {"v1": ("train", "b.tif"), "v2": ("train", "b.tif"), "t": ("test", "c.tif")}
    assert _problem(rows) is None
    problem = _problem(rows, folds=True)
    assert "slides v1 (train), v2 (train) are the same image file b.tif: k-fold (`train.folds`)" in problem


def test_files_not_written_yet_compare_by_their_normalised_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = {"x": ("train", "out/demo/d0.tiff"), "z": ("test", f"{tmp_path}/out/./demo/d0.tiff")}
    assert shared_images({s: v[0] for s, v in rows.items()}, {s: v[1] for s, v in rows.items()}) == [["x", "z"]]


def test_many_shared_files_are_counted_not_listed(files):
    rows = {f"s{k}": ("train" if k % 2 else "test", f"{'abc'[k % 3]}.tif") for k in range(12)}
    problem = _problem(rows)
    assert "\n" not in problem and "(2 more image(s) are listed twice)" in problem and " and 0 more" not in problem


def test_one_stat_per_slide(files, monkeypatch):
    """What makes 100,000 slides cheap: each image path is stat'ed once, nothing is read."""
    calls = []
    real = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: calls.append(path) or real(path, *a, **k))
    images = {f"s{k}": f"{'abc'[k % 3]}.tif" for k in range(300)}
    shared_images(dict.fromkeys(images, "test"), images)
    assert len(calls) == 300
