"""Slides from other scanners: OpenSlide and DICOM WSI readers equal tifffile's pixels; backend choice and errors."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pydicom
import pytest
import tifffile
import zarr
from support.wsi_formats import SVS_MPP, tissue_like, write_dicom, write_philips, write_svs

from wsiseg.convert import convert_slide
from wsiseg.errors import SlideError
from wsiseg.readers.openslide import detect, flatten
from wsiseg.readers.registry import choose_backend
from wsiseg.readers.slide import SourceSlide
from wsiseg.samples.sheet import validate_samples


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    """An SVS-style TIFF (JPEG tiles, 0.499 um/px) of 700 x 900 px and its pixels as tifffile decodes them."""
    path = write_svs(tmp_path_factory.mktemp("svs") / "scan.svs", tissue_like(700, 900))
    return path, tifffile.imread(path)


@pytest.fixture(scope="module")
def dicom(svs, tmp_path_factory):
    """A DICOM WSI folder made from the SVS fixture with wsidicomizer."""
    return write_dicom(svs[0], tmp_path_factory.mktemp("dicom") / "scan")


def level0(store) -> np.ndarray:
    return np.asarray(zarr.open_group(store, mode="r")["0"][:]).transpose(1, 2, 0)


def test_generic_tiled_tiff_through_openslide_equals_tifffile(rgb_tiff, tmp_path):
    path, image = rgb_tiff
    with SourceSlide(path, reader="openslide") as slide:
        assert type(slide.reader).__name__ == "OpenSlideReader" and slide.reader.vendor == "generic-tiff"
        assert slide.shape == image.shape[:2] and slide.tiled
        np.testing.assert_array_equal(slide.read(13, 290, 7, 411), image[13:290, 7:411])
        np.testing.assert_array_equal(np.concatenate([b for _, b in slide.bands(64)]), image)
    out = convert_slide(path, tmp_path / "o.zarr", reader="openslide", chunk=64)
    np.testing.assert_array_equal(level0(out), image)
    assert zarr.open_group(out, mode="r").attrs["wsiseg"]["reader"]["backend"] == "openslide"


def test_svs_through_openslide_equals_tifffile_with_mpp_levels_and_label(svs):
    path, pixels = svs
    with SourceSlide(path, reader="openslide") as slide:
        reader = slide.reader
        assert reader.vendor == "aperio"
        assert reader.pixel_size.mpp == pytest.approx(SVS_MPP) and "openslide" in reader.pixel_size.source.lower()
        assert reader.levels == [(700, 900), (175, 225)]
        assert "label" in reader.associated and "thumbnail" in reader.associated
        np.testing.assert_array_equal(slide.read(0, 700, 0, 900), pixels)  # same JPEG tiles, same decoder: bit-exact
        np.testing.assert_array_equal(slide.read(250, 530, 260, 790), pixels[250:530, 260:790])


def test_a_vendor_format_goes_to_openslide_by_itself(tmp_path):
    """Philips TIFF, the vendor format that can be made here: auto picks OpenSlide, which applies the
    vendor's metadata (pixel size, level downsamples); pixels equal tifffile's decoding of the same tiles."""
    path = write_philips(tmp_path / "scan.tiff", tissue_like(700, 900))
    assert choose_backend(path) == "openslide"
    with SourceSlide(path) as slide:
        assert slide.reader.vendor == "philips" and slide.reader.levels == [(700, 900), (350, 450)]
        assert slide.reader.pixel_size.mpp == pytest.approx(SVS_MPP)
        np.testing.assert_array_equal(slide.read(0, 700, 0, 900), tifffile.imread(path))


def test_auto_keeps_tifffile_for_tiff_and_svs_and_picks_dicom_for_folders(rgb_tiff, svs, dicom):
    assert choose_backend(rgb_tiff[0]) == "tifffile"
    assert choose_backend(svs[0]) == "tifffile"
    assert choose_backend(dicom) == "dicom"
    with SourceSlide(svs[0]) as slide:
        assert type(slide.reader).__name__ == "SegmentReader"


def test_vendor_detection_agrees_with_openslide_python_without_importing_it(rgb_tiff, svs, tmp_path):
    """detect() calls libopenslide itself (importing openslide-python and Pillow cost ~25 ms per conversion):
    same vendors as openslide-python's detect_format, and auto-picking a plain TIFF's backend imports neither."""
    import openslide

    philips = write_philips(tmp_path / "scan.tiff", tissue_like(300, 200))
    junk, odd = tmp_path / "junk.ndpi", tmp_path / "n\u00e4me with space.tif"
    junk.write_bytes(b"not a slide" * 50)
    odd.write_bytes(rgb_tiff[0].read_bytes())
    for path in (rgb_tiff[0], svs[0], philips, junk, odd, tmp_path / "missing.tif"):
        assert detect(path) == openslide.OpenSlide.detect_format(str(path)), path
    assert [detect(p) for p in (rgb_tiff[0], svs[0], philips, junk)] == ["generic-tiff", "aperio", "philips", None]
    code = "import sys; from wsiseg.readers.registry import choose_backend; b = choose_backend(__import__('pathlib').Path(sys.argv[1])); "
    code += "print(b, 'openslide' in sys.modules, 'PIL.Image' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code, str(rgb_tiff[0])], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["tifffile", "False", "False"]


def test_vendor_detection_without_the_openslide_bin_wheel_uses_openslide_python(svs, monkeypatch):
    """A conda env has a system OpenSlide and no openslide-bin: detection goes through openslide-python."""
    importlib.import_module("openslide")  # its library loaded first, as a conda env's system OpenSlide would be

    from wsiseg.readers import openslide as openslide_reader

    monkeypatch.setitem(sys.modules, "openslide_bin", None)  # importing it raises ImportError
    openslide_reader._detect_vendor.cache_clear()
    try:
        assert openslide_reader._detect_vendor() is None
        assert detect(svs[0]) == "aperio" and choose_backend(svs[0]) == "tifffile"
    finally:
        openslide_reader._detect_vendor.cache_clear()


def test_dicom_wsi_reads_back_equal_pixels_levels_and_pixel_spacing(svs, dicom, tmp_path):
    path, pixels = svs
    with SourceSlide(dicom) as slide:  # auto: a folder of .dcm files
        reader = slide.reader
        assert type(reader).__name__ == "DicomReader"
        assert reader.levels == [(700, 900), (175, 225)]
        assert reader.pixel_size.mpp == pytest.approx(SVS_MPP) and reader.pixel_size.source == "DICOM PixelSpacing"
        assert "label" in reader.associated
        np.testing.assert_array_equal(slide.read(0, 700, 0, 900), pixels)
        np.testing.assert_array_equal(slide.read(301, 566, 17, 888), pixels[301:566, 17:888])
    out = convert_slide(dicom, tmp_path / "d.zarr", chunk=128)
    np.testing.assert_array_equal(level0(out), pixels)
    found = zarr.open_group(out, mode="r").attrs["wsiseg"]["reader"]
    assert found == {"backend": "dicom", "vendor": "dicom", "levels": [[700, 900], [175, 225]], "associated": ["label"]}


def test_a_single_dicom_file_is_read_too(svs, dicom):
    with SourceSlide(dicom) as slide:
        base = slide.reader.wsi.levels.base_level.datasets[0]
    (single,) = [
        p for p in dicom.iterdir() if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == base.SOPInstanceUID
    ]
    with SourceSlide(single) as slide:
        assert slide.reader.base_dataset.SOPInstanceUID == base.SOPInstanceUID
        np.testing.assert_array_equal(slide.read(100, 200, 100, 300), svs[1][100:200, 100:300])


def test_a_dicom_folder_passes_the_sample_sheet(dicom):
    table = pd.DataFrame([["s1", str(dicom), "", "test"]], columns=["slide_id", "image", "mask", "split"])
    assert validate_samples(table, "sheet.csv").loc["s1", "image"] == str(dicom)


def test_a_file_no_backend_reads_names_the_file_and_the_backends_tried(tmp_path):
    bad = tmp_path / "scan.ndpi"
    bad.write_bytes(b"not a slide at all" * 100)
    with pytest.raises(SlideError) as err:
        SourceSlide(bad)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{bad}:")
    assert all(name in message for name in ("tifffile", "openslide", "dicom"))


def test_a_folder_without_dicom_files_and_a_forced_wrong_backend_are_clear(tmp_path, rgb_tiff):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "notes.txt").write_text("x")
    with pytest.raises(SlideError, match=r"scans: is a directory, expected an image file \(or a DICOM WSI"):
        SourceSlide(tmp_path / "scans")
    with pytest.raises(SlideError, match=r"slide.tif: wsidicom cannot read it as a DICOM WSI"):
        SourceSlide(rgb_tiff[0], reader="dicom")


def test_mrxs_without_its_data_folder_names_the_folder(tmp_path):
    slide = tmp_path / "case.mrxs"
    slide.write_text("[GENERAL]\n")
    with pytest.raises(SlideError, match=r"case.mrxs: an MRXS slide needs its data folder .*case next to it"):
        SourceSlide(slide, reader="openslide")


def test_transparent_openslide_pixels_are_composited_on_white():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
    np.testing.assert_array_equal(flatten(rgba), [[[10, 20, 30], [255, 255, 255], [127, 127, 127]]])
