"""Sample sheets from datasets in their download layout (`wsiseg samples`)."""

import io
import json

import pandas as pd
import pytest

from wsiseg.cli import main
from wsiseg.datasets import DatasetLayoutError, assign_splits, dataset_samples


@pytest.fixture
def kidney(tmp_path):
    root = tmp_path / "hubmap"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for i in ("aaa", "bbb", "ccc"):
        (root / "train" / f"{i}.tiff").write_bytes(b"")
    (root / "train" / "ccc.json").write_text(json.dumps([]))
    (root / "test" / "ddd.tiff").write_bytes(b"")
    pd.DataFrame({"id": ["aaa", "bbb"], "encoding": ["1 2", "3 4"]}).to_csv(root / "train.csv", index=False)
    return root


def test_hubmap_kidney_sheet(kidney):
    sheet = dataset_samples("hubmap-kidney", kidney, val_fraction=0.3, seed=1).set_index("slide_id")
    assert sheet.loc["aaa", "mask"].endswith("train.csv") and sheet.loc["ccc", "mask"].endswith("ccc.json")
    assert sheet.loc["ddd", "split"] == "test" and sheet.loc["ddd", "mask"] == ""
    assert sorted(sheet.loc[["aaa", "bbb", "ccc"], "split"]) == ["train", "train", "val"]


def test_unannotated_training_slide_is_named(kidney):
    (kidney / "train" / "eee.tiff").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match=r"eee.tiff: no annotation"):
        dataset_samples("hubmap-kidney", kidney)


def test_pairs_matched_by_stem_via_cli(tmp_path, capsys):
    for folder, names in (("images", ["a.png", "b.png", "c.png", "d.png"]), ("masks", ["a.png", "b.png", "c.png"])):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / name).write_bytes(b"")
    assert main(["samples", "--format", "pairs", str(tmp_path), "--val-fraction", "0.34"]) == 0
    sheet = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False).set_index("slide_id")
    assert sheet.loc["d", "split"] == "test" and sheet.loc["d", "mask"] == ""
    assert (sheet["split"] == "val").sum() == 1 and sheet.loc["a", "mask"].endswith("masks/a.png")


def test_bad_layouts(tmp_path):
    with pytest.raises(DatasetLayoutError, match="unknown dataset format 'coco'"):
        dataset_samples("coco", tmp_path)
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetLayoutError, match="masks: folder not found"):
        dataset_samples("pairs", tmp_path)


def test_split_is_seeded_and_order_independent():
    ids = [f"s{i}" for i in range(10)]
    assert assign_splits(ids, 0.2, 3) == assign_splits(ids[::-1], 0.2, 3)
    assert sum(v == "val" for v in assign_splits(ids, 0.2, 3).values()) == 2
