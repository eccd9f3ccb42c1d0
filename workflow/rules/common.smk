import re
import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

# The wsiseg library lives in src/; scripts import it through the link
# workflow/scripts/wsiseg, so the workflow runs without `pip install -e .`.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from wsiseg.demo import demo_samples
from wsiseg.folds import fold_split
from wsiseg.samples import read_samples, validate_samples

RESULTS = config["results"].rstrip("/")
MODEL = config["model_name"]
DEMO = config["demo"]["enabled"]

if DEMO:
    SAMPLES = validate_samples(
        demo_samples(f"{RESULTS}/demo", config["demo"]["slides"]),
        "demo",
        check_files=False,
    )
else:
    SAMPLES = read_samples(config["samples"])
validate(SAMPLES, schema="../schemas/samples.schema.yaml")


wildcard_constraints:
    slide="|".join(re.escape(s) for s in SAMPLES.index),
    model=re.escape(MODEL),


def slides(*splits):
    """Slide ids whose split is one of `splits`, in sample-sheet order."""
    return [s for s in SAMPLES.index if SAMPLES.loc[s, "split"] in splits]


def predicted_slides():
    """Slides that get predictions: validation and test."""
    return slides("val", "test")


def convert_input(wildcards):
    """Image and (if annotated) mask file of one slide."""
    row = SAMPLES.loc[wildcards.slide]
    return {"image": row["image"], **({"mask": row["mask"]} if row["mask"] else {})}


def train_settings():
    """Config `train` minus the keys the workflow itself handles (folds)."""
    return {k: v for k, v in config["train"].items() if k != "folds"}


FOLDS = config["train"]["folds"]
# one training run per fold (models/{model}/fold{fold}/) or a single one (models/{model}/)
TRAIN_RUN = "{model}/fold{fold}" if FOLDS else "{model}"
TRAIN_LABEL = (
    "{wildcards.model} fold {wildcards.fold}" if FOLDS else "{wildcards.model}"
)


def train_patches(wildcards):
    """Patch stores a training run learns from and validates on: the sample sheet's
    train/val split, or with `train.folds: k` the slides of fold {fold} for validation.
    """
    if FOLDS:
        train, val = fold_split(
            slides("train", "val"), FOLDS, int(wildcards.fold), config["seed"]
        )
    else:
        train, val = slides("train"), slides("val")
    store = f"{RESULTS}/patches/{{slide}}.zarr"
    return {"train": expand(store, slide=train), "val": expand(store, slide=val)}


def fold_outputs(name):
    """`name` (model.ckpt, metrics.csv) of every fold's run."""
    return [f"{RESULTS}/models/{MODEL}/fold{k}/{name}" for k in range(FOLDS)]


def model_checkpoints():
    """Checkpoint(s) that predict uses (several are averaged as an ensemble): one per fold with k-fold."""
    return (
        fold_outputs("model.ckpt")
        if FOLDS
        else [f"{RESULTS}/models/{MODEL}/model.ckpt"]
    )


def final_outputs():
    """The targets of `rule all`."""
    return [
        f"{RESULTS}/submission.csv",
        f"{RESULTS}/metrics.csv",
        f"{RESULTS}/models/{MODEL}/curves.png",
        *expand(f"{RESULTS}/overlays/{{slide}}.png", slide=predicted_slides()),
        *expand(f"{RESULTS}/geojson/{{slide}}.geojson", slide=predicted_slides()),
    ]
