"""Sample sheets from datasets in their download layout (`wsiseg samples`)."""

import io
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsiseg.cli import main
from wsiseg.samples.layouts import DatasetLayoutError, assign_splits, dataset_samples


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


# --- the field's layouts, with real tiny images (tests/layouts.py) ---------------------------------

from support.layouts import PALETTE, make_colormap, make_dsb2018, make_hpa, make_monuseg  # noqa: E402

from wsiseg.convert import convert_slide  # noqa: E402
from wsiseg.report import match_objects  # noqa: E402
from wsiseg.store.slide import SlideStore  # noqa: E402


def converted(row, tmp_path, **options) -> SlideStore:
    """The sample-sheet row converted to a store."""
    out = convert_slide(
        row["image"],
        tmp_path / f"{row['slide_id']}.zarr",
        mask=row["mask"] or None,
        slide_id=row["slide_id"],
        **options,
    )
    return SlideStore(out)


def test_dsb2018_mask_folder_is_the_union_with_instance_ids(tmp_path):
    counts = make_dsb2018(tmp_path / "dsb", train=4, test=2)
    sheet = dataset_samples("dsb2018", tmp_path / "dsb").set_index("slide_id", drop=False)
    assert sorted(sheet.index[sheet["split"] != "test"]) == sorted(counts)
    assert (sheet["split"] == "test").sum() == 2 and (sheet.loc[sheet["split"] == "test", "mask"] == "").all()
    row = sheet.loc[sorted(counts)[0]]
    store = converted(row, tmp_path)
    masks = [np.asarray(Image.open(p)) > 0 for p in sorted(Path(row["mask"]).glob("*.png"))]
    np.testing.assert_array_equal(store.mask_plane(0) > 0, np.any(masks, axis=0))
    ids = store.instance_plane()
    assert len(np.unique(ids[ids > 0])) == counts[row["slide_id"]]
    assert store.levels[0].shape[0] == 3  # the RGBA PNG lost its alpha channel


def test_touching_nuclei_stay_separate_objects_with_instance_ids(tmp_path):
    """Two nuclei sharing an edge are one connected component but two true objects."""
    folder = tmp_path / "masks"
    folder.mkdir()
    for k, (x0, x1) in enumerate(((4, 12), (12, 20))):
        mask = np.zeros((24, 24), np.uint8)
        mask[6:14, x0:x1] = 255
        Image.fromarray(mask).save(folder / f"{k}.png")
    Image.fromarray(np.full((24, 24, 3), 20, np.uint8)).save(tmp_path / "img.png")
    store = converted({"slide_id": "x", "image": tmp_path / "img.png", "mask": str(folder)}, tmp_path)
    union, ids = np.asarray(store.mask_plane(0)), store.instance_plane()
    assert match_objects(union, union) == (1, 1, 1)  # connected components merge them
    assert match_objects(union, ids, truth_instances=True)[0] == 2  # the instance ids keep both


def test_hubmap_hpa_sheet_groups_by_organ_and_decodes_the_rle_column(tmp_path):
    truth = make_hpa(tmp_path / "hpa")
    sheet = dataset_samples("hubmap-hpa", tmp_path / "hpa").set_index("slide_id", drop=False)
    assert sheet["group"].to_dict() == {
        "1000": "kidney",
        "1037": "lung",
        "1074": "spleen",
        "1111": "kidney",
        "1148": "lung",
    }
    assert set(sheet["split"]) == {"train", "val"} and sheet["mask"].str.endswith("train.csv").all()
    store = converted(sheet.loc["1074"], tmp_path)
    np.testing.assert_array_equal(store.mask_plane(0), truth["1074"])
    (tmp_path / "hpa" / "test_images").mkdir()
    shutil.copy(tmp_path / "hpa" / "train_images" / "1000.tiff", tmp_path / "hpa" / "test_images" / "10078.tiff")
    pd.DataFrame({"id": ["10078"], "organ": ["prostate"]}).to_csv(tmp_path / "hpa" / "test.csv", index=False)
    sheet = dataset_samples("hubmap-hpa", tmp_path / "hpa").set_index("slide_id")
    assert sheet.loc["10078", ["split", "mask", "group"]].tolist() == ["test", "", "prostate"]


def test_hubmap_hpa_size_mismatch_and_unannotated_images_are_named(tmp_path):
    make_hpa(tmp_path / "hpa")
    table = pd.read_csv(tmp_path / "hpa" / "train.csv", dtype=str)
    table.loc[0, "img_height"] = "3000"
    table.to_csv(tmp_path / "hpa" / "train.csv", index=False)
    with pytest.raises(DatasetLayoutError, match=r"1000.tiff: image is 160x192 \(HxW\) but .*train.csv lists 3000x192"):
        dataset_samples("hubmap-hpa", tmp_path / "hpa")
    table.iloc[1:].to_csv(tmp_path / "hpa" / "train.csv", index=False)
    with pytest.raises(DatasetLayoutError, match=r"image\(s\) without annotation in .*train.csv: \['1000'\]"):
        dataset_samples("hubmap-hpa", tmp_path / "hpa")


def test_monuseg_aperio_xml_is_rasterised_per_region(tmp_path):
    truth = make_monuseg(tmp_path / "monuseg", train=3, test=1)
    sheet = dataset_samples("monuseg", tmp_path / "monuseg").set_index("slide_id", drop=False)
    assert sheet["split"].value_counts().to_dict() == {"train": 2, "val": 1, "test": 1}
    assert sheet["mask"].str.endswith(".xml").all()
    image_id = sorted(truth)[0]
    store = converted(sheet.loc[image_id], tmp_path)
    expected = np.zeros((96, 160), np.uint8)
    cv2.fillPoly(expected, [p.round().astype(np.int32) for p in truth[image_id]], 1)
    mask = np.asarray(store.mask_plane(0))
    assert (mask & expected).sum() / (mask | expected).sum() > 0.9
    ids = store.instance_plane()
    assert len(np.unique(ids[ids > 0])) == len(truth[image_id]) == 10


def test_colormap_sheet_suggests_the_palette_and_masks_map_to_classes(tmp_path, caplog):
    truth = make_colormap(tmp_path / "tiles", count=4)
    with caplog.at_level("INFO", logger="wsiseg.samples.layouts"):
        sheet = dataset_samples("colormap", tmp_path / "tiles").set_index("slide_id", drop=False)
    assert '"#00ff00": 1, "#ff0000": 2' in caplog.text
    store = converted(sheet.loc["tile_01"], tmp_path, palette=PALETTE)
    np.testing.assert_array_equal(store.mask_plane(0), truth["tile_01"])


def test_pairs_split_table_fixes_listed_ids(tmp_path):
    truth = make_colormap(tmp_path / "p", count=5)
    pd.DataFrame({"id": ["tile_00", "tile_01", "tile_02"], "split": ["val", "test", "train"]}).to_csv(
        tmp_path / "p" / "splits.csv", index=False
    )
    sheet = dataset_samples("pairs", tmp_path / "p").set_index("slide_id")
    assert sheet.loc[["tile_00", "tile_01", "tile_02"], "split"].tolist() == ["val", "test", "train"]
    assert set(sheet.loc[["tile_03", "tile_04"], "split"]) <= {"train", "val"} and len(sheet) == len(truth)
    pd.DataFrame({"id": ["nope"], "split": ["val"]}).to_csv(tmp_path / "p" / "splits.csv", index=False)
    with pytest.raises(DatasetLayoutError, match=r"splits.csv: id\(s\) without an image .*\['nope'\]"):
        dataset_samples("pairs", tmp_path / "p")


def test_pairs_split_table_may_fix_every_split(tmp_path):
    make_colormap(tmp_path / "p", count=4)
    splits = {"tile_00": "train", "tile_01": "train", "tile_02": "val", "tile_03": "test"}
    pd.DataFrame({"id": list(splits), "split": list(splits.values())}).to_csv(
        tmp_path / "p" / "splits.csv", index=False
    )
    assert dataset_samples("pairs", tmp_path / "p").set_index("slide_id")["split"].to_dict() == splits
    pd.DataFrame({"id": list(splits), "split": ["train", "train", "train", "test"]}).to_csv(
        tmp_path / "p" / "splits.csv", index=False
    )
    with pytest.raises(
        DatasetLayoutError,
        match=r"splits.csv: no labelled image is 'val' \(labelled images by split: \{'train': 3, 'test': 1\}",
    ):
        dataset_samples("pairs", tmp_path / "p")


def test_bad_field_layouts_name_the_path(tmp_path):
    make_dsb2018(tmp_path / "dsb", train=3, test=0)
    victim = sorted((tmp_path / "dsb" / "stage1_train").iterdir())[1]
    shutil.rmtree(victim / "masks")
    with pytest.raises(DatasetLayoutError, match=f"{victim.name}: missing masks folder"):
        dataset_samples("dsb2018", tmp_path / "dsb")
    make_monuseg(tmp_path / "mo", train=2, test=1)
    xml = next((tmp_path / "mo" / "MoNuSegTestData").glob("*.xml"))
    xml.unlink()
    with pytest.raises(DatasetLayoutError, match=f"{xml.stem}.tif: image without annotation"):
        dataset_samples("monuseg", tmp_path / "mo")
    with pytest.raises(DatasetLayoutError, match="stage1_train: folder not found"):
        dataset_samples("dsb2018", tmp_path / "mo")
