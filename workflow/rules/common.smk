import re
import sys
from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

# The wsiseg library lives in src/; scripts import it through the link
# workflow/scripts/wsiseg, so the workflow runs without `pip install -e .`.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from wsiseg.demo import demo_samples
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


def model_checkpoints():
    """Checkpoint(s) that predict uses (several are averaged as an ensemble)."""
    return [f"{RESULTS}/models/{MODEL}/model.ckpt"]


def final_outputs():
    """The targets of `rule all`."""
    return [
        f"{RESULTS}/submission.csv",
        f"{RESULTS}/metrics.csv",
        f"{RESULTS}/models/{MODEL}/curves.png",
        *expand(f"{RESULTS}/overlays/{{slide}}.png", slide=predicted_slides()),
        *expand(f"{RESULTS}/geojson/{{slide}}.geojson", slide=predicted_slides()),
    ]
