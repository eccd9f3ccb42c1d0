"""Every config/examples/*.yaml, layered over config/config.yaml as `snakemake --configfile` does, passes the
workflow's own config checks: the schema (one line naming the file and key), the exclusive keys, the schema
defaults, and the dry run's plan checks (network, patch and tile sizes, contour settings, pixel sizes)."""

from __future__ import annotations

import copy

import pytest
import yaml
from snakemake.utils import update_config, validate
from support.paths import ROOT

from wsiseg.config.checks import check_schema, plan_problems, resolve_exclusive
from wsiseg.resolution import PixelSize

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
BASE = ROOT / "config" / "config.yaml"
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.yaml"))
# (height, width) of the images of the datasets whose size is fixed (patches must fit them); others: WSIs and
# large tiles
SHAPES = {"glas": (522, 775), "monuseg": (1000, 1000), "dsb2018": (256, 256)}


def layered(example):
    """config.yaml updated by ``example`` (nested sections merged key by key, as Snakemake merges configfiles)."""
    config = copy.deepcopy(yaml.safe_load(BASE.read_text()))
    update_config(config, yaml.safe_load(example.read_text()))
    return config


def test_the_examples_are_found():
    assert len(EXAMPLES) >= 7 and ROOT / "config" / "examples" / "glas.yaml" in EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_an_example_config_passes_the_schema_and_the_plan_checks(example):
    config = layered(example)
    files = [BASE, example]
    check_schema(config, SCHEMA, files)
    resolve_exclusive(config, files)
    validate(config, str(SCHEMA), set_default=True)  # fills the schema's defaults, as the workflow does
    default_mpp = config["convert"].get("default_mpp")
    # a slide's pixel size: convert.default_mpp where the example sets one (its slides state none); else as if
    # the slide or the sample sheet stated 0.5 um/px (the examples' datasets that carry one)
    pixel = PixelSize(default_mpp, "default") if default_mpp else PixelSize(0.5, "header")
    splits = {"a": "train", "b": "val", "c": "test"}
    problems = plan_problems(
        config,
        splits,
        lambda path: SHAPES.get(example.stem, (4096, 4096)),
        {s: f"{s}.tif" for s in splits},
        training=not config["predict"].get("model"),
        pixel_size_of=lambda slide: pixel,
    )
    assert problems == [], f"{example.name}: {problems}"
