import pandas as pd
import pytest

from wsiseg.samples.sheet import SampleSheetError, read_samples


def _sheet(tmp_path, rows, columns=("slide_id", "image", "mask", "split")):
    (tmp_path / "img.tif").write_bytes(b"")
    (tmp_path / "m.csv").write_text("id,encoding\n")
    path = tmp_path / "samples.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


def test_valid_sheet(tmp_path):
    img, m = str(tmp_path / "img.tif"), str(tmp_path / "m.csv")
    table = read_samples(_sheet(tmp_path, [("a", img, m, "train"), ("b", img, "", "test")]))
    assert table.loc["b", "mask"] == "" and table.loc["a", "split"] == "train"


@pytest.mark.parametrize(
    "rows, message",
    [
        ([("a", "IMG", "M", "training")], r"row 2 \(a\): unknown split 'training'"),
        ([("a", "IMG", "M", "train"), ("a", "IMG", "M", "val")], r"duplicate slide_id\(s\) \['a'\]"),
        ([("a", "missing.tif", "M", "train")], "image file not found: missing.tif"),
        ([("a", "IMG", "", "train")], "a train slide needs a mask"),
        ([("a b", "IMG", "M", "train")], "may only hold"),
    ],
)
def test_bad_rows_name_the_row_and_problem(tmp_path, rows, message):
    img, m = str(tmp_path / "img.tif"), str(tmp_path / "m.csv")
    rows = [tuple(img if v == "IMG" else m if v == "M" else v for v in r) for r in rows]
    with pytest.raises(SampleSheetError, match=message):
        read_samples(_sheet(tmp_path, rows))


def test_missing_column(tmp_path):
    path = _sheet(tmp_path, [("a", "x", "train")], columns=("slide_id", "image", "split"))
    with pytest.raises(SampleSheetError, match=r"samples.csv: missing column\(s\) \['mask'\]"):
        read_samples(path)
