"""Physical pixel size end to end: read from every kind of slide, recorded in every store,
and used to train and predict at one physical scale across scanners."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
import zarr
from skimage.measure import label
from support.workflow import snakemake_command, write_config

from wsiseg import rle
from wsiseg.cli import main
from wsiseg.convert import convert_slide
from wsiseg.patches import PatchParams, extract_patches
from wsiseg.predict import PredictParams, predict_slide
from wsiseg.resolution import (
    PixelSize,
    ResolutionError,
    choose,
    philips_pixel_size,
    scn_pixel_size,
    tiff_pixel_size,
)
from wsiseg.store.slide import SlideStore

IMAGE = np.random.default_rng(0).integers(0, 256, size=(96, 128, 3), dtype=np.uint8)


def _ome(path):
    path = path.with_name(path.stem + ".ome.tif")  # tifffile writes OME-XML for .ome.tif names
    tifffile.imwrite(
        path,
        IMAGE,
        metadata={
            "axes": "YXS",
            "PhysicalSizeX": 250,
            "PhysicalSizeY": 250,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeYUnit": "nm",
        },
    )
    return path


def _svs(path):
    tifffile.imwrite(
        path,
        IMAGE,
        tile=(64, 64),
        description="Aperio Image Library v12.0.15\r\n128x96 [0,0 128x96] (64x64) JPEG/RGB Q=70|AppMag = 20|MPP = 0.4990|Filename = s",
    )
    return path


def _centimetre(path):
    tifffile.imwrite(path, IMAGE, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return path


def _inch(path):
    tifffile.imwrite(path, IMAGE, resolution=(25400 / 0.25, 25400 / 0.25), resolutionunit="INCH")
    return path


def _placeholder(path):
    tifffile.imwrite(path, IMAGE, resolution=(72, 72), resolutionunit="INCH")  # what image editors write
    return path


def _bare(path):
    tifffile.imwrite(path, IMAGE)
    return path


METADATA = {
    "ome-tiff-nanometres": (_ome, 0.25, "OME-XML"),
    "aperio-svs-description": (_svs, 0.499, "Aperio MPP"),
    "resolution-tags-centimetre": (_centimetre, 0.5, "TIFF resolution tags"),
    "resolution-tags-inch": (_inch, 0.25, "TIFF resolution tags"),
    "72-dpi-placeholder": (_placeholder, None, "unknown"),
    "no-metadata": (_bare, None, "unknown"),
}


@pytest.mark.parametrize("case", list(METADATA))
def test_pixel_size_is_read_from_the_slide_metadata(case, tmp_path):
    write, mpp, source = METADATA[case]
    with tifffile.TiffFile(write(tmp_path / "s.tif")) as tif:
        found = tiff_pixel_size(tif, "s.tif")
    assert found.mpp == pytest.approx(mpp) if mpp else found.mpp is None
    assert source in found.source


def test_vendor_xml_pixel_sizes():
    philips = '<DataObject><Attribute Name="DICOM_PIXEL_SPACING" Group="0x0028" Element="0x0030">"0.000243902" "0.000243902"</Attribute></DataObject>'
    assert philips_pixel_size(philips, "p.tiff").mpp == pytest.approx(0.243902)
    scn = (
        '<scn xmlns="http://www.leica-microsystems.com/scn/2010/10/01"><collection>'
        '<image name="macro"><view sizeX="76000000" sizeY="25000000"/><pixels><dimension sizeX="1616" sizeY="528" r="0"/></pixels></image>'
        '<image name="scan"><view sizeX="10000000" sizeY="5000000"/><pixels><dimension sizeX="20000" sizeY="10000" r="0"/>'
        '<dimension sizeX="5000" sizeY="2500" r="1"/></pixels></image></collection></scn>'
    )
    assert scn_pixel_size(scn, "s.scn").mpp == pytest.approx(0.5)  # the scan, not the macro photograph


def test_non_square_pixels_are_an_error_naming_the_file(tmp_path):
    tifffile.imwrite(tmp_path / "skew.tif", IMAGE, resolution=(1e4 / 0.5, 1e4 / 0.25), resolutionunit="CENTIMETER")
    with pytest.raises(ResolutionError, match=r"skew.tif.*non-square pixels \(0.5 x 0.25 um"):
        convert_slide(tmp_path / "skew.tif", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
    # the sample sheet's mpp overrides what the file states, bad or not
    store = zarr.open_group(convert_slide(tmp_path / "skew.tif", tmp_path / "o.zarr", mpp=0.5), mode="r")
    assert store.attrs["wsiseg"]["mpp"] == 0.5 and store.attrs["wsiseg"]["mpp_source"] == "sample sheet"


def test_sample_sheet_overrides_the_slide_and_the_default_fills_in():
    slide = PixelSize(0.5, "Aperio MPP")
    assert choose(slide, 0.25, 1.0) == PixelSize(0.25, "sample sheet")
    assert choose(slide, None, 1.0) == slide
    assert choose(PixelSize(None), None, 1.0) == PixelSize(1.0, "convert.default_mpp")
    assert not choose(PixelSize(None)).known


def test_store_scales_are_micrometres_and_viewers_read_them(tmp_path):
    """Slide stores carry the real scale per level, valid NGFF (ome-zarr-models), and bioio reads
    the source's pixel size back: sizes measured in napari, QuPath or bioio are right."""
    import bioio_ome_zarr
    from bioio import BioImage
    from ome_zarr_models.v04 import Image

    _svs(tmp_path / "s.svs.tif")
    mask = tmp_path / "m.png"
    cv2.imwrite(str(mask), (IMAGE[:, :, 0] > 128).astype(np.uint8) * 255)
    out = convert_slide(tmp_path / "s.svs.tif", tmp_path / "s.zarr", mask=mask, chunk=32)
    root = zarr.open_group(out, mode="r")
    assert root.attrs["wsiseg"]["mpp"] == pytest.approx(0.499) and root.attrs["wsiseg"]["mpp_source"] == "Aperio MPP"
    for group in (root, root["labels/mask"]):
        scales = [d["coordinateTransformations"][0]["scale"][-2:] for d in group.attrs["multiscales"][0]["datasets"]]
        assert scales == [[pytest.approx(0.499 * 2**k)] * 2 for k in range(len(scales))]
        assert group.attrs["multiscales"][0]["axes"][-1]["unit"] == "micrometer"
    Image.from_zarr(root)
    sizes = BioImage(out, reader=bioio_ome_zarr.Reader).physical_pixel_sizes
    assert (sizes.Y, sizes.X) == (pytest.approx(0.499), pytest.approx(0.499))
    assert SlideStore(out).pixel_size == PixelSize(0.499, "Aperio MPP")


def test_png_gets_the_configured_default_or_stays_unknown(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), IMAGE)
    known = zarr.open_group(
        convert_slide(tmp_path / "a.png", tmp_path / "k.zarr", default_mpp=0.65, chunk=32), mode="r"
    )
    assert known.attrs["wsiseg"]["mpp_source"] == "convert.default_mpp"
    assert known.attrs["multiscales"][0]["datasets"][1]["coordinateTransformations"][0]["scale"] == [1.0, 1.3, 1.3]
    unknown = zarr.open_group(convert_slide(tmp_path / "a.png", tmp_path / "u.zarr"), mode="r")
    assert unknown.attrs["wsiseg"]["mpp"] is None and unknown.attrs["wsiseg"]["mpp_source"] == "unknown"
    assert "unit" not in unknown.attrs["multiscales"][0]["axes"][-1]  # pixels, not a made-up micrometre


def test_info_prints_size_pixel_size_and_its_source(tmp_path, capsys):
    _svs(tmp_path / "s.tif")
    _placeholder(tmp_path / "p.tif")
    convert_slide(tmp_path / "s.tif", tmp_path / "s.zarr", chunk=32)
    assert main(["info", str(tmp_path / "s.tif"), str(tmp_path / "s.zarr"), str(tmp_path / "p.tif")]) == 0
    text = capsys.readouterr().out
    assert "128 x 96 px" in text and text.count("0.499 um/px (Aperio MPP)") == 2
    assert "pixel size unknown" in text and "`mpp` column" in text
    assert main(["info", "--json", str(tmp_path / "s.zarr")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "slide store" and info["scales"][1] == [1.0, pytest.approx(0.998), pytest.approx(0.998)]


# ---------------------------------------------------------------------------
# One physical scale across scanners


def _rescan(tiny_demo: Path, folder: Path, slide_id: str = "demo_2") -> dict[float, tuple[Path, Path]]:
    """The same demo tissue as scanned at 0.5 um/px (the demo's own) and at 0.25 um/px (2x larger),
    each with its ground truth as a mask image: {mpp: (image, mask)}."""
    image = tifffile.imread(tiny_demo / f"{slide_id}.tiff")
    table = pd.read_csv(tiny_demo / "train.csv").set_index("id")
    mask = rle.decode(table.loc[slide_id, "encoding"], image.shape[:2])
    out = {}
    for mpp, factor in ((0.5, 1), (0.25, 2)):
        size = (image.shape[1] * factor, image.shape[0] * factor)
        pixels = image if factor == 1 else cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
        truth = mask if factor == 1 else cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        path = folder / f"scan_{factor}x.tif"
        tifffile.imwrite(
            path, pixels, tile=(128, 128), photometric="rgb", resolution=(1e4 / mpp,) * 2, resolutionunit="CENTIMETER"
        )
        cv2.imwrite(str(folder / f"scan_{factor}x.png"), truth.astype(np.uint8) * 255)
        out[mpp] = (path, folder / f"scan_{factor}x.png")
    return out


@pytest.fixture(scope="module")
def rescanned(tiny_demo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rescan")
    scans = _rescan(tiny_demo, folder)
    stores = {
        mpp: convert_slide(image, folder / f"{mpp}.zarr", mask=mask, slide_id=f"s{mpp}", chunk=128)
        for mpp, (image, mask) in scans.items()
    }
    return folder, scans, stores


def test_patches_at_one_physical_size_from_two_scanners(rescanned, tmp_path):
    _, _, stores = rescanned
    params = PatchParams(size=32, mpp=1.0, stride=32, min_coverage=0.05, negative_ratio=0)
    fine = extract_patches(stores[0.25], tmp_path / "f.zarr", tmp_path / "f.csv", params)
    coarse = extract_patches(stores[0.5], tmp_path / "c.zarr", tmp_path / "c.csv", params)
    assert set(fine["downscale"]) == {4.0} and set(coarse["downscale"]) == {2.0}
    assert set(fine["mpp"]) == set(coarse["mpp"]) == {1.0}  # um per patch pixel, recorded per patch
    # the same grid cells, at the same physical place (level-0 positions differ by the scanners' ratio)
    assert len(fine) == len(coarse) > 0
    assert (fine[["x", "y"]].to_numpy() == 2 * coarse[["x", "y"]].to_numpy()).all()
    a = zarr.open_group(tmp_path / "f.zarr", mode="r")
    b = zarr.open_group(tmp_path / "c.zarr", mode="r")
    assert a.attrs["patch_mpp"] == b.attrs["patch_mpp"] == 1.0
    diff = np.abs(a["images"][:].astype(int) - b["images"][:].astype(int)).mean()
    assert diff < 6, f"patches of the same tissue differ by {diff:.1f} grey levels on average"
    assert (a["masks"][:] == b["masks"][:]).mean() > 0.97


def test_predictions_agree_across_scanners(rescanned, tiny_trained, tmp_path):
    """A model that knows its um/px reads each slide at its own downscale; the two level-0 masks,
    brought to one grid, agree, and so do the object counts."""
    _, ckpt = tiny_trained
    _, _, stores = rescanned
    params = PredictParams(tile=64, overlap=16, min_area_um2=100.0, device="cpu")
    preds = {mpp: predict_slide(store, ckpt, tmp_path / f"p{mpp}.zarr", params) for mpp, store in stores.items()}
    roots = {mpp: zarr.open_group(p, mode="r") for mpp, p in preds.items()}
    assert roots[0.25].attrs["downscale"] == 4.0 and roots[0.5].attrs["downscale"] == 2.0
    assert roots[0.25].attrs["model_mpp"] == roots[0.5].attrs["model_mpp"] == 1.0
    assert roots[0.25].attrs["mpp"] == 0.25 and roots[0.25].attrs["min_area"] == 1600  # 100 um^2 at 0.25 um/px
    fine = roots[0.25]["labels/mask/0"][:]
    coarse = roots[0.5]["labels/mask/0"][:]
    fine_on_coarse = cv2.resize(fine, coarse.shape[::-1], interpolation=cv2.INTER_AREA) >= 0.5
    dice = 2 * (fine_on_coarse & (coarse > 0)).sum() / (fine_on_coarse.sum() + (coarse > 0).sum())
    assert coarse.any() and dice >= 0.95, f"Dice between the two scans' predictions {dice:.3f}"
    assert label(fine > 0).max() == label(coarse > 0).max()


def test_mixed_resolution_sheet_predicts_each_slide_at_the_model_scale(rescanned, tiny_trained, tmp_path):
    """A sample sheet of two scanners (one stated by the slide, one by the sheet's mpp column) and
    `predict.model`: no config change, each slide at its own downscale."""
    folder, scans, _ = rescanned
    _, ckpt = tiny_trained
    fine, fine_mask = scans[0.25]
    bare = tmp_path / "bare.tif"  # the 0.5 um/px scan re-saved without any metadata: the sheet says it
    tifffile.imwrite(bare, tifffile.imread(scans[0.5][0]), tile=(128, 128), photometric="rgb")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(
        f"slide_id,image,mask,split,mpp\nfine,{fine},{fine_mask},test,\ncoarse,{bare},{scans[0.5][1]},test,0.5\n"
    )
    config = {
        "results": "out",
        "samples": str(sheet),
        "demo": {"enabled": False},
        "convert": {"chunk": 128},
        "predict": {"model": str(ckpt), "tile": 64, "overlap": 16},
    }
    write_config(tmp_path, config)
    cmd = snakemake_command(tmp_path, "--cores", "2")
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    out = tmp_path / "out"
    assert zarr.open_group(out / "zarr" / "coarse.zarr", mode="r").attrs["wsiseg"]["mpp_source"] == "sample sheet"
    attrs = {s: zarr.open_group(out / "predictions" / f"{s}.zarr", mode="r").attrs for s in ("fine", "coarse")}
    assert attrs["fine"]["downscale"] == 4.0 and attrs["coarse"]["downscale"] == 2.0
    metrics = pd.read_csv(out / "metrics.csv").set_index("slide_id")
    assert abs(metrics.loc["fine", "dice"] - metrics.loc["coarse", "dice"]) < 0.03
    geojson = json.loads((out / "geojson" / "fine.geojson").read_text())
    areas = [f["properties"]["measurements"] for f in geojson["features"]]
    assert areas and all("Area µm^2" in m for m in areas)


def test_physical_scale_without_a_pixel_size_stops_the_dry_run(tmp_path):
    """`patches.mpp` on slides that state no pixel size: one line naming them and both ways to set it."""
    for name in ("a", "b", "c"):
        _bare(tmp_path / f"{name}.tif")
    mask = rle.encode(np.ones(IMAGE.shape[:2], bool))
    (tmp_path / "m.csv").write_text(f"id,encoding\na,{mask}\nb,{mask}\nc,{mask}\n")
    (tmp_path / "sheet.csv").write_text(
        "slide_id,image,mask,split\na,a.tif,m.csv,train\nb,b.tif,m.csv,val\nc,c.tif,,test\n"
    )
    write_config(tmp_path, {"results": "out", "samples": "sheet.csv", "patches": {"size": 32, "mpp": 1.0}})
    cmd = snakemake_command(tmp_path, "-n", "--cores", "1")
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "wsiseg: config error" in line]
    assert result.returncode != 0 and len(lines) == 1, (result.stdout + result.stderr)[-2000:]
    assert all(
        w in lines[0] for w in ("a, b, c", "no pixel size", "`patches.mpp`", "`mpp` column", "convert.default_mpp")
    )
    # the second way works: a default pixel size for slides that state none
    write_config(
        tmp_path,
        {
            "results": "out",
            "samples": "sheet.csv",
            "patches": {"size": 32, "mpp": 1.0},
            "convert": {"default_mpp": 0.5},
        },
    )
    assert subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path).returncode == 0


def test_hubmap_hpa_sheet_takes_each_image_pixel_size_from_the_table(tmp_path):
    from support.layouts import make_hpa

    from wsiseg.samples.layouts import dataset_samples
    from wsiseg.samples.sheet import sheet_mpp, validate_samples

    make_hpa(tmp_path / "hpa")
    table = pd.read_csv(tmp_path / "hpa" / "train.csv")
    table.loc[1, "pixel_size"] = 0.7562  # HuBMAP lung images are coarser than HPA's 0.4 um/px
    table.to_csv(tmp_path / "hpa" / "train.csv", index=False)
    sheet = validate_samples(dataset_samples("hubmap-hpa", tmp_path / "hpa"), "sheet")
    assert sheet_mpp(sheet, "1000") == 0.4 and sheet_mpp(sheet, "1037") == 0.7562


def test_a_later_config_file_overrides_the_scale_of_an_earlier_one(tmp_path):
    """config.yaml says `downscale: 2`; an example layered over it with `patches.mpp` wins, and a
    third file with `downscale` wins back, as Snakemake's --configfile order promises."""
    from wsiseg.config.checks import resolve_exclusive

    files = [tmp_path / "config.yaml", tmp_path / "example.yaml", tmp_path / "mine.yaml"]
    files[0].write_text("patches: {downscale: 2}\n")
    files[1].write_text("patches: {mpp: 1.0}\n")
    config = {"patches": {"downscale": 2, "mpp": 1.0}}
    resolve_exclusive(config, files[:2])
    assert config["patches"]["mpp"] == 1.0
    files[2].write_text("patches: {downscale: 4}\n")
    config = {"patches": {"downscale": 4, "mpp": 1.0}}
    resolve_exclusive(config, files)
    assert config["patches"]["mpp"] is None
