"""Predicted masks as DICOM Segmentations, read back with highdicom/pydicom."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
import zarr
from support.stores import write_prediction
from support.wsi_formats import SVS_MPP, tissue_like, write_dicom, write_svs

from wsiseg.dicomseg import DicomSegError, write_dicom_seg
from wsiseg.readers.slide import SourceSlide
from wsiseg.store.prediction import Prediction


def prediction(path, mask, mpp=None, slide_id="s1"):
    write_prediction(path, mask, chunk=64)
    attrs = zarr.open_group(path, mode="a").attrs
    attrs.update({"slide_id": slide_id, **({"mpp": mpp} if mpp else {})})
    return path


def blobs(shape, values=(1,)):
    mask = np.zeros(shape, np.uint8)
    for i, value in enumerate(values):
        mask[60 + 150 * i : 180 + 150 * i, 100 + 200 * i : 420 + 100 * i] = value
    mask[600:640, 700:860] = values[-1]
    return mask


def test_binary_mask_at_the_chosen_level_reads_back_equal(tmp_path):
    store = prediction(tmp_path / "s1.zarr", blobs((700, 900)), mpp=0.25)
    out = write_dicom_seg(store, tmp_path / "dicom" / "s1.dcm", class_name="glomerulus", max_side=500)
    seg = hd.seg.segread(out)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.SegmentationType == "BINARY"
    assert seg.number_of_segments == 1 and seg.get_segment_description(1).segment_label == "glomerulus"
    level1 = Prediction(store).mask_plane(1)  # 350 x 450: the finest level within 500 px
    assert (seg.TotalPixelMatrixRows, seg.TotalPixelMatrixColumns) == level1.shape
    assert [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing] == [
        0.0005,
        0.0005,
    ]
    assert "level 1 (downsample 2)" in seg.ContentDescription
    np.testing.assert_array_equal(seg.get_total_pixel_matrix(combine_segments=True), level1)
    again = hd.seg.segread(write_dicom_seg(store, tmp_path / "again.dcm", max_side=500))
    assert again.StudyInstanceUID == seg.StudyInstanceUID and again.FrameOfReferenceUID == seg.FrameOfReferenceUID
    assert again.SOPInstanceUID != seg.SOPInstanceUID


def test_classes_become_named_segments(tmp_path):
    mask = blobs((700, 900), values=(1, 2))
    store = prediction(tmp_path / "s1.zarr", mask, mpp=0.5)
    seg = hd.seg.segread(write_dicom_seg(store, tmp_path / "s1.dcm", class_names=["background", "tumour", "stroma"]))
    assert [seg.get_segment_description(i).segment_label for i in (1, 2)] == ["tumour", "stroma"]
    assert seg.TotalPixelMatrixRows == 700 and int(seg.Rows) == 512  # level 0 fits: frames are 512 px tiles
    np.testing.assert_array_equal(seg.get_total_pixel_matrix(combine_segments=True), mask)


def test_a_dicom_slide_is_referenced(tmp_path):
    source = write_dicom(write_svs(tmp_path / "scan.svs", tissue_like(700, 900)), tmp_path / "scan")
    with SourceSlide(source) as slide:
        base = slide.reader.base_dataset
    store = prediction(tmp_path / "s1.zarr", blobs((700, 900)))  # no mpp in the store: the DICOM PixelSpacing serves
    seg = hd.seg.segread(write_dicom_seg(store, tmp_path / "s1.dcm", source=source, max_side=500))
    assert seg.StudyInstanceUID == base.StudyInstanceUID and seg.FrameOfReferenceUID == base.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == base.SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == base.SOPInstanceUID
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert [float(v) for v in spacing] == pytest.approx([SVS_MPP / 1000 * 2] * 2)
    np.testing.assert_array_equal(seg.get_total_pixel_matrix(combine_segments=True), Prediction(store).mask_plane(1))


def test_unknown_pixel_size_is_one_clear_line(tmp_path):
    store = prediction(tmp_path / "s1.zarr", blobs((300, 400)))
    with pytest.raises(
        DicomSegError, match=r"s1.zarr: the slide's pixel size is unknown, and a DICOM Segmentation needs one"
    ):
        write_dicom_seg(store, tmp_path / "s1.dcm")
    assert not (tmp_path / "s1.dcm").exists()


def test_cli_writes_the_segmentation(tmp_path, capsys):
    from wsiseg.cli import main

    store = prediction(tmp_path / "s1.zarr", blobs((300, 400)))
    assert main(["dicomseg", str(store), str(tmp_path / "s1.dcm"), "--mpp", "0.5", "--class-name", "nucleus"]) == 0
    seg = hd.seg.segread(tmp_path / "s1.dcm")
    assert seg.get_segment_description(1).segment_label == "nucleus"
    np.testing.assert_array_equal(seg.get_total_pixel_matrix(combine_segments=True), Prediction(store).mask_plane(0))


def test_workflow_plans_a_segmentation_per_predicted_slide_and_reads_a_dicom_folder(tiny_demo, tmp_path):
    """A dry run: a DICOM WSI folder listed as a test slide is converted, and report.dicom_seg adds one
    dicom_seg job per predicted slide (none without it)."""
    import re
    import subprocess

    import pandas as pd
    from support.workflow import snakemake_command, write_config

    folder = write_dicom(write_svs(tmp_path / "scan.svs", tissue_like(300, 400)), tmp_path / "scan")
    sheet = pd.read_csv(tiny_demo / "samples.csv", dtype=str, keep_default_na=False)
    for column in ("image", "mask"):
        sheet[column] = [str(tiny_demo / p) if p else "" for p in sheet[column]]
    sheet.loc[len(sheet)] = {"slide_id": "dcm", "image": str(folder), "mask": "", "split": "test"}
    sheet.to_csv(tmp_path / "sheet.csv", index=False)

    def planned(dicom_seg: bool) -> dict[str, int]:
        write_config(tmp_path, {"samples": "sheet.csv", "report": {"dicom_seg": dicom_seg}})
        cmd = snakemake_command(tmp_path, "-n", "--cores", "1")
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
        table = (result.stdout + result.stderr).split("Job stats:", 1)[1].split("total", 1)[0]
        return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}

    jobs = planned(True)
    predicted = int((sheet["split"] != "train").sum())
    assert jobs["convert"] == len(sheet) and jobs["dicom_seg"] == predicted
    assert "dicom_seg" not in planned(False)
