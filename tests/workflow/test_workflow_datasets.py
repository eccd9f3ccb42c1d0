"""The workflow on datasets in their download layout, driven by the example configs in config/examples/."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
import zarr
from support.layouts import PALETTE, make_colormap, make_dsb2018, make_hpa, make_kidney, make_monuseg
from support.paths import ROOT
from support.workflow import scheduled, snakemake

from wsiseg.cli import main

MAKERS = {
    "hubmap-kidney": make_kidney,
    "hubmap-hpa": make_hpa,
    "dsb2018": make_dsb2018,
    "monuseg": make_monuseg,
    "pairs": make_colormap,  # RGB masks: any non-black pixel is foreground
    "colormap": make_colormap,
}
TINY_TRAIN = {
    "encoder": "resnet18",
    "encoder_depth": 3,
    "decoder_channels": [32, 16, 8],
    "batch_size": 8,
    "accelerator": "cpu",
}


def dataset_workdir(tmp_path, fmt: str):
    """A working directory with the dataset under data/{fmt} and samples.csv written by `wsiseg samples`."""
    MAKERS[fmt](tmp_path / "data" / fmt)
    with open(tmp_path / "samples.csv", "w") as sheet, pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setattr("sys.stdout", sheet)
        assert main(["samples", "--format", fmt, f"data/{fmt}"]) == 0
    return tmp_path


def example(fmt: str, **overrides) -> dict:
    """config/examples/{fmt}.yaml with sections updated by ``overrides`` (tiny model, results in out/)."""
    config = yaml.safe_load((ROOT / "config" / "examples" / f"{fmt}.yaml").read_text())
    config["results"] = "out"
    for key, value in overrides.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    return config


@pytest.mark.parametrize("fmt", sorted(MAKERS))
def test_example_config_plans_the_run_on_its_layout(tmp_path, fmt):
    """`snakemake -n --configfile config/examples/{fmt}.yaml` over the default config.yaml, as the README says."""
    work = dataset_workdir(tmp_path, fmt)
    example_file = str(ROOT / "config" / "examples" / f"{fmt}.yaml")
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    result = snakemake(work, base, "-n", "--configfile", example_file)
    # the fixtures are 96-192 px images: the example's real-size patches stop the dry run, in one line
    assert result.returncode == 1 and "larger than every train/val slide" in result.stdout + result.stderr
    (work / "tiny.yaml").write_text(yaml.safe_dump({"patches": {"size": 64, "downscale": 1}}))
    result = snakemake(work, base, "-n", "--configfile", example_file, str(work / "tiny.yaml"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    jobs = scheduled(result)
    sheet = pd.read_csv(work / "samples.csv")
    per_job = yaml.safe_load((ROOT / "config" / "examples" / f"{fmt}.yaml").read_text())["slides_per_job"]
    converts = jobs.get("convert", 0) + jobs.get("convert_batch", 0)
    assert converts == -(-len(sheet) // per_job) and jobs["train"] == 1 and "demo" not in jobs


def test_dsb2018_small_images_run_grouped_end_to_end(tmp_path):
    """670 DSB images must not mean 2000 jobs: 10 images of 96x128 px run as 3 convert, 2 patch and
    1 predict jobs; prediction tiles (128 px) larger than the images are padded; object counts use the instance ids."""
    work = dataset_workdir(tmp_path, "dsb2018")
    config = example(
        "dsb2018",
        slides_per_job=4,
        model_name="tiny",
        patches={"size": 64, "stride": 32},
        train={**TINY_TRAIN, "epochs": 6, "lr": 0.005},
        predict={"tile": 128, "overlap": 32, "tta": ["hflip"]},
    )
    plan = scheduled(snakemake(work, config, "-n"))
    assert plan["convert_batch"] == 3 and plan["patches_batch"] == 2 and plan["predict_batch"] == 1
    assert "convert" not in plan and "predict" not in plan
    result = snakemake(work, config)
    assert result.returncode == 0, result.stderr[-5000:]
    out = work / "out"
    sheet = pd.read_csv(work / "samples.csv", keep_default_na=False).set_index("slide_id")
    counts = {
        p.parent.parent.name: len(list(p.parent.glob("*.png")))
        for p in (work / "data" / "dsb2018").glob("stage1_train/*/masks/m000.png")
    }
    metrics = pd.read_csv(out / "metrics.csv").set_index("slide_id")
    val = sheet.index[sheet["split"] == "val"]
    assert sorted(metrics.index[:-1]) == sorted(val)
    assert all(metrics.loc[s, "objects_true"] == counts[s] for s in val)
    assert metrics.loc["mean", "dice"] > 0.8  # bright nuclei on a dark background: learnt within 6 short epochs
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert sorted(submission["id"]) == sorted(sheet.index[sheet["split"] == "test"])
    for slide in sheet.index[sheet["split"] != "train"]:
        assert (out / "overlays" / f"{slide}.png").is_file()
    patches = pd.concat(pd.read_csv(p) for p in out.glob("patches/batches/*/*.csv"))
    assert len(patches) >= 8 and set(patches["slide_id"]) == set(sheet.index[sheet["split"] != "test"])
    assert (out / "logs" / "convert" / "batches" / "b0000.log").is_file()
    # the report subcommand finds the grouped stores and scores them as the workflow did
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        assert (
            main(
                [
                    "report",
                    "--samples",
                    "samples.csv",
                    "--slides",
                    "out/zarr",
                    "--predictions",
                    "out/predictions",
                    "--out-dir",
                    "cli",
                ]
            )
            == 0
        )
    pd.testing.assert_frame_equal(pd.read_csv(work / "cli" / "metrics.csv"), pd.read_csv(out / "metrics.csv"))


def test_colormap_multiclass_runs_end_to_end_with_class_names(tmp_path):
    work = dataset_workdir(tmp_path, "colormap")
    config = example(
        "colormap",
        slides_per_job=1,
        model_name="tiny",
        convert={"chunk": 128, "palette": PALETTE},
        patches={"size": 64, "downscale": 1, "stride": 32, "classes": 3, "min_tissue": 0.0},
        train={**TINY_TRAIN, "epochs": 2},
        predict={"tile": 64, "overlap": 16, "tta": []},
        report={"class_names": ["background", "tumour", "stroma"]},
    )
    result = snakemake(work, config)
    assert result.returncode == 0, result.stderr[-5000:]
    out = work / "out"
    metrics = pd.read_csv(out / "metrics.csv").set_index("slide_id")
    assert {"dice_tumour", "dice_stroma"} <= set(metrics.columns)
    assert metrics.loc["mean", ["dice_tumour", "dice_stroma"]].between(0, 1).all()
    slide = metrics.index[0]
    prediction = zarr.open_group(out / "predictions" / f"{slide}.zarr", mode="r")
    assert prediction["0"].shape[0] == 3 and set(np.unique(prediction["labels/mask/0"][:])) <= {0, 1, 2}
    stored = zarr.open_group(out / "zarr" / f"{slide}.zarr", mode="r")
    assert set(np.unique(stored["labels/mask/0"][:])) == {0, 1, 2}
    features = json.loads((out / "geojson" / f"{slide}.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in features} <= {"tumour", "stroma"} and features
