"""Cohort scale: planning a run costs O(1) per slide on our side, so `snakemake -n` of 100,000 slides is
Snakemake's own per-job DAG work and nothing more (benchmarks/cohort_bench.py measures the whole)."""

from __future__ import annotations

import ast
import re
import time

import pandas as pd
import pytest
import yaml
from support.paths import ROOT

from wsiseg.config.checks import plan_problems
from wsiseg.samples.batching import SlideBatches
from wsiseg.samples.sheet import (
    COLUMNS,
    OPTIONAL,
    SLIDE_ID,
    SPLITS,
    SampleSheetError,
    shared_images,
    sheet_mpps,
    validate_samples,
)

COMMON = (ROOT / "workflow" / "rules" / "common.smk").read_text()


def _sheet(count: int) -> pd.DataFrame:
    splits = ["train", "train", "val"] + ["test"] * 17
    return pd.DataFrame(
        {
            "slide_id": [f"s{k:06d}" for k in range(count)],
            "image": [f"slides/s{k:06d}.tif" for k in range(count)],  # not there: check_files=False
            "mask": ["masks.csv" if splits[k % 20] != "test" else "" for k in range(count)],
            "split": [splits[k % 20] for k in range(count)],
        }
    )


def test_the_slide_wildcard_is_a_pattern_not_an_alternation_of_the_sheets_ids():
    block = COMMON.split("wildcard_constraints:", 1)[1].split("\n\n", 1)[0]
    value = ast.literal_eval(re.search(r"^\s+slide=(.+),$", block, re.M)[1])
    assert "|" not in value and "SAMPLES" not in block
    pattern = re.compile(value)
    assert pattern.fullmatch("s000001") and pattern.fullmatch("HBM-123_a.b")
    assert not pattern.fullmatch("batches/b0000")  # one path component: never a store inside a group folder


def test_per_job_input_functions_do_no_pandas_lookups():
    """Input functions run once per job: sheet columns are dicts (O(1)), not `SAMPLES.loc` (slow, per call)."""
    assert "SAMPLES.loc" not in COMMON


def test_rule_all_does_not_ask_for_every_slides_report_output():
    """The report job writes each slide's overlay and GeoJSON; asking rule all for each made Snakemake search
    the report job's outputs and inputs once per slide (quadratic in the cohort)."""
    body = COMMON.split("def final_outputs", 1)[1]
    assert "overlays/" not in body and "geojson/" not in body


def test_the_sheet_checks_everything_its_schema_says():
    """The workflow no longer runs jsonschema over every row: validate_samples must hold the schema's rules."""
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "samples.schema.yaml").read_text())
    properties = schema["properties"]
    assert schema["required"] == COLUMNS and set(properties) == set(COLUMNS + OPTIONAL)
    assert properties["slide_id"]["pattern"] == f"^{SLIDE_ID.pattern}$"
    assert tuple(properties["split"]["enum"]) == SPLITS
    assert all(p["type"] == "string" for p in properties.values())  # validate_samples casts every column to str
    assert properties["image"]["minLength"] == 1
    bad = _sheet(3)
    bad.loc[1, "image"] = ""
    with pytest.raises(SampleSheetError, match=r"sheet.csv: row 3 \(s000001\): empty image"):
        validate_samples(bad, "sheet.csv", check_files=False)
    bad = _sheet(3)
    bad.loc[2, "slide_id"] = "café"  # isalnum, but not the schema's ASCII pattern
    with pytest.raises(SampleSheetError, match="row 4: slide_id 'café' may only hold"):
        validate_samples(bad, "sheet.csv", check_files=False)


def test_the_patch_size_check_reads_one_header_when_the_first_slide_fits():
    splits = {f"s{k}": "train" if k % 2 else "val" for k in range(5000)}
    read = []

    def shape_of(image):
        read.append(image)
        return 4000, 4000

    config = {
        "train": {"arch": "Unet", "encoder": "resnet18", "folds": 0},
        "predict": {"tile": 512, "overlap": 128},
        "patches": {"size": 128, "downscale": 2},
    }
    assert plan_problems(config, splits, shape_of, {s: f"{s}.tif" for s in splits}, training=False) == []
    plan_problems(config, splits, shape_of, {s: f"{s}.tif" for s in splits}, training=True)
    assert read == ["s0.tif"]


def test_planning_a_20000_slide_sheet_takes_well_under_a_second_of_python():
    """The Python side of the dry run for 20,000 slides (about 0.3 s on 2 busy cores); the bound is loose."""
    table = _sheet(20_000)
    start = time.perf_counter()
    samples = validate_samples(table, "sheet.csv", check_files=False)
    split, images, mpp = samples["split"].to_dict(), samples["image"].to_dict(), sheet_mpps(samples)
    labelled = [s for s, v in split.items() if v in ("train", "val")]
    predicted = [s for s, v in split.items() if v in ("val", "test")]
    for per_job in (1, 1000):
        batches = SlideBatches("results", per_job, {"zarr": list(split), "patches": labelled, "predictions": predicted})
        outputs = [batches.job_outputs("zarr", [s]) for s in split] + [
            batches.store("predictions", s) for s in predicted
        ]
    shared = shared_images(split, images)
    took = time.perf_counter() - start
    assert len(outputs) == 20_000 + len(predicted) and shared == [] and mpp["s000000"] is None
    assert took < 5, f"{took:.2f} s"
