"""Bad input, table-driven: every mistake gives one line naming the file or key, exits non-zero,
leaves nothing behind and touches nothing that was there before.

CLI cases run ``wsiseg`` in-process in a fresh folder; config cases run ``snakemake -n``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import tifffile
import torch
from support.workflow import snakemake_command, write_config

from wsiseg.cli import main

# ---------------------------------------------------------------- small inputs


def tiff(path: str = "s.tif", shape=(200, 260, 3), dtype=np.uint8, **kw) -> str:
    data = np.random.default_rng(1).integers(0, 200, shape).astype(dtype)
    tifffile.imwrite(path, data, tile=(64, 64), photometric="rgb" if len(shape) == 3 and shape[-1] == 3 else None, **kw)
    return path


def store(path: str = "s.zarr", image: str = "s.tif", mask: str | None = None) -> str:
    from wsiseg.convert import convert_slide

    if not Path(image).exists():
        tiff(image)
    convert_slide(image, path, mask=mask, chunk=64)
    return path


def write(path: str, content: str | bytes) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    (Path(path).write_bytes if isinstance(content, bytes) else Path(path).write_text)(content)
    return path


def victim(path: str) -> str:
    """A user's folder with a file in it."""
    write(f"{path}/notes.txt", "months of work")
    return path


def rle_table(path: str, encoding: str, slide: str = "s") -> str:
    return write(path, f"id,encoding\n{slide},{encoding}\n")


def geojson(path: str, geometries: list[dict]) -> str:
    features = [{"type": "Feature", "geometry": g, "properties": {}} for g in geometries]
    return write(path, json.dumps({"type": "FeatureCollection", "features": features}))


def checkpoint(path: str, payload) -> str:
    torch.save(payload, path)
    return path


class Evil:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def predicted(path: str) -> str:
    """A folder that wsiseg predict wrote (its marker file)."""
    from wsiseg.utils.io import MARKER

    return str(Path(write(f"{path}/{MARKER}", json.dumps({"stage": "predict", "complete": True}))).parent)


def nan_tiff(path: str) -> str:
    tifffile.imwrite(path, np.full((64, 80), np.nan, np.float32), tile=(32, 32))
    return path


def bomb(path: str) -> str:
    from support.images import png_declaring

    return write(path, png_declaring(100_000, 100_000))


def overdeclared(path: str) -> str:
    """A tiled TIFF whose header declares 1000x900 px but lists only the tiles of 200x260."""
    import struct

    source = tiff("small.tif")
    with tifffile.TiffFile(source) as tif:
        tags = tif.pages[0].tags
        at = {name: tags[name].valueoffset for name in ("ImageWidth", "ImageLength")}
        fmt = "<H" if tags["ImageWidth"].dtype == 3 else "<I"
    data = bytearray(Path(source).read_bytes())
    for name, value in (("ImageWidth", 1000), ("ImageLength", 900)):
        data[at[name] : at[name] + struct.calcsize(fmt)] = struct.pack(fmt, value)
    os.remove(source)
    return write(path, bytes(data))


def square(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


# ------------------------------------------------- table: (setup -> argv, words the line names)

CLI_CASES: dict[str, Callable[[], tuple[list[str], list[str]]]] = {
    # paths: never destroy what the user has
    "convert-into-user-folder": lambda: (["convert", tiff(), victim("victim")], ["victim", "not a wsiseg output"]),
    "convert-onto-itself": lambda: (["convert", tiff(), "s.tif"], ["s.tif", "output is the input"]),
    "convert-into-cwd": lambda: (["convert", tiff(), "."], [".", "contain the input"]),
    "convert-into-mask-folder": lambda: (
        ["convert", tiff(), "masks/out.zarr", "--mask", write("masks/0.png", b"")[:5]],
        ["masks/out.zarr", "inside the input"],
    ),
    "convert-onto-user-file": lambda: (
        ["convert", tiff(), write("notes.zarr", "a file")],
        ["notes.zarr", "existing file"],
    ),
    "convert-onto-predict-store": lambda: (
        ["convert", tiff(), predicted("p.zarr")],
        ["p.zarr", "predict output, not a convert output"],
    ),
    "predict-into-user-folder": lambda: (
        ["predict", store(), victim("victim2"), write("m.ckpt", b"PK")],
        ["victim2", "not a wsiseg output"],
    ),
    "predict-onto-slide": lambda: (
        ["predict", store(), "s.zarr", write("m.ckpt", b"PK")],
        ["s.zarr", "output is the input"],
    ),
    "predict-onto-other-slide": lambda: (
        ["predict", store(), store("t.zarr"), write("m.ckpt", b"PK")],
        ["t.zarr", "convert output"],
    ),
    "patches-csv-onto-folder": lambda: (["patches", store(), "p.zarr", victim("table.csv")], ["table.csv", "folder"]),
    # image files
    "image-missing": lambda: (["convert", "missing.tif", "o.zarr"], ["missing.tif"]),
    "image-is-folder": lambda: (["convert", victim("slides"), "o.zarr"], ["slides", "directory"]),
    "image-empty": lambda: (["convert", write("e.tif", b""), "o.zarr"], ["e.tif", "empty file"]),
    "image-not-tiff": lambda: (
        ["convert", write("doc.tif", b"%PDF-1.4 nope"), "o.zarr"],
        ["doc.tif", "cannot read as TIFF"],
    ),
    "image-truncated": lambda: (
        ["convert", write("cut.tif", Path(tiff("full.tif")).read_bytes()[:3000]), "o.zarr"],
        ["cut.tif"],
    ),
    "image-bad-png": lambda: (["convert", write("x.png", b"\x89PNG\r\n\x1a\n broken"), "o.zarr"], ["x.png"]),
    "image-all-nan": lambda: (
        ["convert", nan_tiff("nan.tif"), "o.zarr", "--uint16", "percentile"],
        ["nan.tif", "no finite pixel"],
    ),
    "image-png-bomb": lambda: (["convert", bomb("bomb.png"), "o.zarr"], ["bomb.png", "100000", "max-decoded-pixels"]),
    "image-header-overdeclared": lambda: (
        ["convert", overdeclared("big.tif"), "o.zarr"],
        ["big.tif", "declares 1000x900"],
    ),
    "image-too-many-channels": lambda: (
        ["convert", tiff("c5.tif", (5, 64, 64), planarconfig="separate"), "o.zarr"],
        ["c5.tif", "channels"],
    ),
    "image-channel-out-of-range": lambda: (
        ["convert", tiff("c5.tif", (5, 64, 64), planarconfig="separate"), "o.zarr", "--channels", "0", "1", "9"],
        ["c5.tif", "9"],
    ),
    # masks
    "mask-missing": lambda: (["convert", tiff(), "o.zarr", "--mask", "nope.csv"], ["nope.csv"]),
    "mask-size-differs": lambda: (
        ["convert", tiff(), "o.zarr", "--mask", tiff("m.tif", (100, 100), np.uint8)],
        ["m.tif", "100"],
    ),
    "rle-past-end": lambda: (
        ["convert", tiff(), "o.zarr", "--mask", rle_table("t.csv", "51990 100")],
        ["t.csv", "past"],
    ),
    "rle-no-row": lambda: (
        ["convert", tiff(), "o.zarr", "--mask", rle_table("t.csv", "1 5", slide="other")],
        ["t.csv", "s"],
    ),
    "rle-missing-column": lambda: (
        ["convert", tiff(), "o.zarr", "--mask", write("t.csv", "name,mask\ns,1 5\n")],
        ["t.csv"],
    ),
    "rle-odd-numbers": lambda: (["convert", tiff(), "o.zarr", "--mask", rle_table("t.csv", "1 5 9")], ["t.csv"]),
    "rle-huge-value": lambda: (
        ["convert", tiff(), "o.zarr", "--mask", rle_table("t.csv", "1 10000000000000000000000")],
        ["t.csv", "too large"],
    ),
    "geojson-nan-coordinate": lambda: (
        [
            "convert",
            tiff(),
            "o.zarr",
            "--mask",
            geojson("a.geojson", [{"type": "Polygon", "coordinates": [[[0, 0], [float("nan"), 5], [9, 9], [0, 0]]]}]),
        ],
        ["a.geojson", "non-finite coordinate"],
    ),
    "geojson-points-only-train": lambda: (
        [
            "convert",
            tiff(),
            "o.zarr",
            "--require-foreground",
            "--mask",
            geojson("a.geojson", [{"type": "Point", "coordinates": [5, 5]}]),
        ],
        ["a.geojson", "Point"],
    ),
    "geojson-outside-image-train": lambda: (
        [
            "convert",
            tiff(),
            "o.zarr",
            "--require-foreground",
            "--mask",
            geojson("a.geojson", [square(5000, 5000, 5100, 5100)]),
        ],
        ["a.geojson"],
    ),
    "geojson-not-json": lambda: (
        ["convert", tiff(), "o.zarr", "--mask", write("a.geojson", "{not json")],
        ["a.geojson"],
    ),
    "geojson-not-geometry": lambda: (
        ["convert", tiff(), "o.zarr", "--mask", write("a.geojson", '{"type": "Banana"}')],
        ["a.geojson"],
    ),
    "palette-unknown-colour": lambda: (
        ["convert", tiff(), "o.zarr", "--mask", tiff("rgb.tif"), "--palette", '{"#ff0000": 1}'],
        ["rgb.tif", "colour"],
    ),
    "palette-bad-json": lambda: (
        ["convert", tiff(), "o.zarr", "--mask", tiff("rgb.tif"), "--palette", "{red: 1"],
        ["palette"],
    ),
    # checkpoints
    "checkpoint-empty": lambda: (["predict", store(), "p.zarr", write("m.ckpt", b"")], ["m.ckpt", "empty file"]),
    "checkpoint-text": lambda: (
        ["predict", store(), "p.zarr", write("m.ckpt", "hello")],
        ["m.ckpt", "not a PyTorch checkpoint"],
    ),
    "checkpoint-malicious": lambda: (
        ["predict", store(), "p.zarr", checkpoint("m.ckpt", {"x": Evil()})],
        ["m.ckpt", "could run code"],
    ),
    "checkpoint-foreign": lambda: (
        ["predict", store(), "p.zarr", checkpoint("m.ckpt", {"w": torch.zeros(2)})],
        ["m.ckpt", "not a wsiseg checkpoint"],
    ),
    "checkpoint-missing": lambda: (["predict", store(), "p.zarr", "nope.ckpt"], ["nope.ckpt", "does not exist"]),
    "checkpoint-is-folder": lambda: (["predict", store(), "p.zarr", victim("models")], ["models", "folder"]),
    # stores and stage options
    "predict-on-tiff": lambda: (["predict", tiff(), "p.zarr", write("m.ckpt", b"PK")], ["s.tif"]),
    "predict-overlap-ge-tile": lambda: (
        ["predict", store(), "p.zarr", "m.ckpt", "--tile", "64", "--overlap", "64"],
        ["overlap"],
    ),
    "predict-unknown-tta": lambda: (["predict", store(), "p.zarr", "m.ckpt", "--tta", "spin"], ["spin"]),
    "patches-without-mask": lambda: (["patches", store(), "p.zarr", "p.csv"], ["s.zarr", "mask"]),
    "patches-on-missing-store": lambda: (["patches", "none.zarr", "p.zarr", "p.csv"], ["none.zarr"]),
    # sample sheets (wsiseg report reads them)
    "sheet-missing": lambda: (["report", "--samples", "none.csv"], ["none.csv"]),
    "sheet-missing-column": lambda: (
        ["report", "--samples", write("sheet.csv", "slide_id,image,split\na,s.tif,test\n")],
        ["sheet.csv", "mask"],
    ),
    "sheet-unknown-split": lambda: (
        ["report", "--samples", write("sheet.csv", "slide_id,image,mask,split\na,s.tif,,holdout\n")],
        ["sheet.csv", "holdout"],
    ),
    "sheet-duplicate-id": lambda: (
        ["report", "--samples", write("sheet.csv", "slide_id,image,mask,split\na,s.tif,,test\na,s.tif,,test\n")],
        ["sheet.csv", "duplicate"],
    ),
}


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (but Snakemake's own bookkeeping) with a hash of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".snakemake" not in p.parts
    }


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_bad_input_one_line_nothing_lost(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv, words = CLI_CASES[case]()
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err[-5:]
    line = err[-1]
    assert line.startswith(f"wsiseg {argv[0]}: error: "), err[-5:]
    for word in words:
        assert word in line, line
    assert "Traceback" not in "\n".join(err)
    assert snapshot(tmp_path) == before, "a file was created, changed or removed"
    assert not list(tmp_path.rglob("*.tmp-*")), "a temporary path was left behind"
    assert not (tmp_path / "pwned.txt").exists()


# ------------------------------------------------- config mistakes: `snakemake -n` stops in one line

BASE = {
    "results": "out",
    "samples": "sheet.csv",
    "patches": {"size": 64, "downscale": 1},
    "train": {"encoder_depth": 3, "decoder_channels": [32, 16, 8], "epochs": 1},
    "predict": {"tile": 64, "overlap": 16},
}

# overlay on BASE -> words the one line names (the file and the key)
CONFIG_CASES: dict[str, tuple[dict, list[str]]] = {
    "misspelt-key": ({"train": {"epoch": 3}}, ["config.yaml", "`train.epoch`", "did you mean `epochs`"]),
    "misspelt-section": ({"predcit": {"tile": 64}}, ["config.yaml", "`predcit`", "did you mean `predict`"]),
    "unknown-arch": ({"train": {"arch": "Unett"}}, ["`train.arch`", "Unett", "did you mean `Unet`"]),
    "unknown-encoder": ({"train": {"encoder": "resnet19"}}, ["`train.encoder`", "did you mean `resnet18`"]),
    "unknown-loss": ({"train": {"loss": {"dicee": 1.0}}}, ["`train.loss`", "dicee", "did you mean `dice`"]),
    "unknown-augment": ({"train": {"augment": ["hflip", "rotate90"]}}, ["`train.augment.1`", "rotate90"]),
    "unknown-scheduler": ({"train": {"scheduler": "cosin"}}, ["`train.scheduler`", "did you mean `cosine`"]),
    "unknown-tta": ({"predict": {"tta": ["hflp"]}}, ["`predict.tta.0`", "did you mean `hflip`"]),
    "overlap-ge-tile": ({"predict": {"tile": 64, "overlap": 64}}, ["`predict.overlap`", "`predict.tile`"]),
    "threshold-above-1": ({"predict": {"threshold": 1.5}}, ["config.yaml", "`predict.threshold`", "maximum of 1"]),
    "threshold-below-0": ({"predict": {"threshold": -0.1}}, ["`predict.threshold`", "minimum of 0"]),
    "coverage-inverted": ({"patches": {"min_coverage": 0.8, "max_coverage": 0.2}}, ["`patches.min_coverage`"]),
    "wrong-type": ({"train": {"epochs": "many"}}, ["`train.epochs`", "'many' is not of type 'integer'"]),
    "num-workers-neither-count-nor-auto": ({"train": {"num_workers": "many"}}, ["`train.num_workers`", "'many'"]),
    "patch-larger-than-every-slide": (
        {"patches": {"size": 512, "downscale": 1}},
        ["`patches.size`", "larger than every"],
    ),
    "no-val-slide": ({"sheet": "noval"}, ["no `val` slide"]),
    "too-few-slides-for-folds": ({"train": {"folds": 5}}, ["`train.folds`", "5"]),
    # physical scale: two keys for one thing, or a scale no slide states
    "mpp-and-downscale": (
        {"patches": {"mpp": 1.0}},
        ["config.yaml", "`patches.mpp`", "`patches.downscale`", "keep one"],
    ),
    "min-area-px-and-um2": (
        {"predict": {"min_area": 5, "min_area_um2": 40.0}},
        ["`predict.min_area_um2`", "`predict.min_area`"],
    ),
    "um2-without-pixel-size": (
        {"predict": {"max_hole_um2": 40.0}},
        ["b, c", "no pixel size", "`predict.max_hole_um2`", "`mpp` column", "default_mpp"],
    ),
}


@pytest.fixture(scope="module")
def slides_folder(tmp_path_factory) -> Path:
    """Three 200x260 TIFFs with an RLE table: the files a sample sheet points at."""
    folder = tmp_path_factory.mktemp("sheet")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for name in ("a", "b", "c"):
            tiff(f"{name}.tif")
        write("masks.csv", "id,encoding\na,1 500\nb,1 500\nc,1 500\n")
    finally:
        os.chdir(cwd)
    return folder


def dry_run(folder: Path, slides: Path, overlay: dict) -> subprocess.CompletedProcess:
    """``snakemake -n`` in ``folder`` on the three slides with BASE updated by ``overlay``."""
    import shutil

    for f in slides.iterdir():
        shutil.copy(f, folder / f.name)
    overlay = dict(overlay)
    splits = ("train", "train", "test") if overlay.pop("sheet", None) == "noval" else ("train", "val", "test")
    rows = [f"{n},{n}.tif,masks.csv,{s}" for n, s in zip("abc", splits)]
    write(str(folder / "sheet.csv"), "slide_id,image,mask,split\n" + "\n".join(rows) + "\n")
    config = {k: {**BASE.get(k, {}), **v} if isinstance(v, dict) else v for k, v in {**BASE, **overlay}.items()}
    write_config(folder, config)
    cmd = snakemake_command(folder, "-n", "--cores", "1")
    return subprocess.run(cmd, capture_output=True, text=True, cwd=folder, timeout=120)


def test_base_config_plans_the_run(slides_folder, tmp_path):
    """The control: without a mistake the same dry run plans every stage."""
    result = dry_run(tmp_path, slides_folder, {})
    assert result.returncode == 0, (result.stdout + result.stderr)[-2000:]
    assert "wsiseg: config error" not in result.stdout + result.stderr


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_config_mistake_stops_dry_run_in_one_line(case, slides_folder, tmp_path):
    overlay, words = CONFIG_CASES[case]
    before = {f.name for f in slides_folder.iterdir()}
    result = dry_run(tmp_path, slides_folder, overlay)
    text = (result.stdout + result.stderr).strip()
    assert result.returncode != 0, text[-2000:]
    lines = [line for line in text.splitlines() if "wsiseg: config error" in line]
    assert len(lines) == 1, text[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    assert "Failed validating" not in text and "Traceback" not in text
    assert not (tmp_path / "out").exists(), "a dry run that stops must write no output"
    assert {f.name for f in slides_folder.iterdir()} == before
