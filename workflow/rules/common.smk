import functools
import os
import re
import sys
from pathlib import Path

from snakemake.utils import validate

# This file's folder (workflow/rules/), also when the workflow is used as a module.
RULES_DIR = Path(str(workflow.current_basedir))
# The wsiseg library lives in src/; scripts import it through the link
# workflow/scripts/wsiseg, so the workflow runs without `pip install -e .`.
sys.path.insert(0, str(RULES_DIR.parents[1] / "src"))
# workflow/envs/*.yaml install wsiseg from here (pip expands ${WSISEG_ROOT}) with --use-conda;
# set here, not asked of the user (so no `envvars:`)
os.environ.update(WSISEG_ROOT=str(RULES_DIR.parents[1]))

from wsiseg.config.checks import (
    ConfigError,
    canonical,
    check_schema,
    image_pixel_size,
    image_shape,
    plan_problems,
    resolve_exclusive,
)
from wsiseg.config.networks import resolve_network

CONFIG_SCHEMA = RULES_DIR.parent / "schemas" / "config.schema.yaml"
# config files from lowest to highest precedence (--configfile overrides the Snakefile's)
CONFIG_FILES = [
    f for f in workflow.configfiles if f not in workflow.overwrite_configfiles
] + list(workflow.overwrite_configfiles)


def stop(problem, name_files=True):
    """End parsing with one line: the config problem, after the config files (highest precedence first)."""
    where = ", ".join(map(str, reversed(CONFIG_FILES))) or "config"
    sys.exit(
        f"wsiseg: config error ({where}): {problem}"
        if name_files
        else f"wsiseg: config error: {problem}"
    )


# one line naming the config file and the key (closest valid key suggested),
# instead of the schema dump a failed `validate` prints
try:
    check_schema(config, CONFIG_SCHEMA, CONFIG_FILES)
    # patches.mpp vs patches.downscale (and um^2 vs px areas): the later config file wins
    resolve_exclusive(config, CONFIG_FILES)
except ConfigError as err:
    stop(err, name_files=False)  # the line names its file itself
validate(config, schema="../schemas/config.schema.yaml")
# params are compared as text: the same settings in another key order must not rerun jobs
for _key, _value in canonical(dict(config)).items():
    config[_key] = _value

from wsiseg.demo import DemoSpec, demo_samples
from wsiseg.resolution import PixelSize, ResolutionError, choose
from wsiseg.samples.folds import fold_split
from wsiseg.config.params import SLIDE_JOB_KEYS, UNTRACKED_KEYS
from wsiseg.samples.sheet import (
    ALLOW_SHARED,
    read_samples,
    shared_images_problem,
    sheet_mpps,
    validate_samples,
)
from wsiseg.samples.batching import SlideBatches
from wsiseg.store.layout import SLIDE_GROUPS

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
# no `validate(SAMPLES, schema="../schemas/samples.schema.yaml")`: validate_samples checks all that
# schema says in one pass (tested), where jsonschema over every row costs seconds per 100,000 slides

# the sheet's columns as dicts: the input functions below run once per job, so each
# lookup must be O(1) (a pandas .loc per call made 100,000-slide dry runs crawl)
SPLIT = SAMPLES["split"].to_dict()
IMAGE = SAMPLES["image"].to_dict()
MASK = SAMPLES["mask"].to_dict()
MPP = sheet_mpps(SAMPLES)  # the sheet's um/px, None where it gives none


def _demo_shape(image):
    return config["demo"]["height"], config["demo"]["width"]


from wsiseg.modelcard import NOT_RESULTS, ModelError, config_hash, resolve_model

# predict.model: predict with a trained model (folder with model.json, checkpoint, or a list)
# instead of training one; no patch or train job then
PREDICT_MODEL = config["predict"].get("model")
TRAINING = not PREDICT_MODEL
if PREDICT_MODEL:
    try:
        MODEL_SPEC = resolve_model(PREDICT_MODEL, key="predict.model")
    except ModelError as err:
        stop(err)
# class names: the config's, else (predict.model) the model card's
CLASS_NAMES = config["report"]["class_names"] or (
    None if TRAINING else MODEL_SPEC.class_names
)


def decisive_train_keys():
    """Config `train` minus the keys that decide how a run goes, never what it learns
    (`UNTRACKED_KEYS`: num_workers, resume, logger, tracking_uri, experiment): as params they would retrain on every
    edit of them; the train script reads them from the config.  `encoder_depth` and
    `decoder_channels` are given as the network is built (null = the architecture's
    default, resolved), so writing out a default, or leaving it out, retrains nothing.
    """
    train = {k: v for k, v in config["train"].items() if k not in UNTRACKED_KEYS}
    train["encoder_depth"], train["decoder_channels"] = resolve_network(
        train["arch"], train.get("encoder_depth"), train.get("decoder_channels")
    )
    return train


# provenance: hashes of the config keys that decide predictions (and the report)
DECISIVE_CONFIG = {**config, "train": decisive_train_keys()}
PREDICT_CONFIG_HASH = config_hash(DECISIVE_CONFIG, NOT_RESULTS + ("report",))
REPORT_CONFIG_HASH = config_hash(DECISIVE_CONFIG)


# mistakes that would otherwise surface only after conversion or training: here,
# in seconds, before any job (also in `snakemake -n`)
@functools.cache  # each slide's header is read once, whichever checks ask
def _pixel_size(slide):
    """A slide's pixel size as convert will record it: sample sheet, image header, convert.default_mpp."""
    listed = MPP[slide]
    if listed is not None:  # the sheet's wins: no header to read
        return choose(PixelSize(None), listed)
    found = (
        PixelSize(DemoSpec().mpp, "demo")
        if DEMO
        else image_pixel_size(IMAGE[slide], config["convert"]["reader"])
    )
    try:
        return choose(found, None, config["convert"].get("default_mpp"))
    except ResolutionError:  # unusable metadata: convert stops on it, naming the slide
        return PixelSize(None)


_problems = plan_problems(
    config,
    SPLIT,
    _demo_shape if DEMO else image_shape,
    IMAGE,
    training=TRAINING,
    pixel_size_of=_pixel_size,
    model_resolution=None if TRAINING else MODEL_SPEC.resolution,
)
# one image file listed as a train and as a test slide (or in two folds): an error unless allowed
if TRAINING and not config[ALLOW_SHARED]:
    _problems.append(
        shared_images_problem(
            SPLIT,
            IMAGE,
            "demo" if DEMO else config["samples"],
            folds=bool(config["train"].get("folds")),
        )
    )
_problems = [p for p in _problems if p]
if _problems:
    stop("; ".join(_problems))


# any one path component (sheet ids hold no slash), not an alternation of the sheet's ids,
# which Python's re matches in time linear in their number, for every job
wildcard_constraints:
    slide=r"[^/]+",
    model=re.escape(MODEL),
    batch=r"b[0-9]+",


@functools.cache
def _slides(splits):
    return tuple(s for s, split in SPLIT.items() if split in splits)


def slides(*splits):
    """Slide ids whose split is one of `splits`, in sample-sheet order."""
    return list(_slides(frozenset(splits)))


def slide_groups(ids):
    """The sample sheet's `group` of each slide in `ids` (empty without that column)."""
    if "group" not in SAMPLES.columns:
        return {}
    groups = SAMPLES["group"].to_dict()
    return {s: groups[s] for s in ids}


def predicted_slides():
    """Slides that get predictions: validation and test; every slide with `predict.model`."""
    return slides("val", "test") if TRAINING else list(SPLIT)


# the slide groups each job handles when slides_per_job > 1, per stage folder
BATCHING = SlideBatches(
    RESULTS,
    config["slides_per_job"],
    {
        "zarr": list(SPLIT),
        "patches": slides("train", "val"),
        "predictions": predicted_slides(),
    },
)
BATCHES = BATCHING.groups
store = BATCHING.store
job_outputs = BATCHING.job_outputs


def converted_groups(stage):
    """Input function: the convert outputs holding the slides of group {batch} of `stage`."""
    return lambda wildcards: job_outputs("zarr", BATCHES[stage][wildcards.batch])


def convert_batch_input(wildcards):
    """Images and masks of the slides in group {batch}."""
    ids = BATCHES["zarr"][wildcards.batch]
    # one RLE table may annotate many slides: list it once
    masks = list(dict.fromkeys(MASK[s] for s in ids if MASK[s]))
    return {"images": [IMAGE[s] for s in ids], "masks": masks}


def needs_foreground(wildcards):
    """Whether slide {slide} trains or validates, so its annotation must mark some foreground."""
    return SPLIT[wildcards.slide] in ("train", "val")


def foreground_slides(wildcards):
    """The train/val slides of convert group {batch} (their annotations must mark foreground)."""
    return [s for s in BATCHES["zarr"][wildcards.batch] if SPLIT[s] in ("train", "val")]


def convert_items(wildcards):
    """[slide_id, image, mask, mpp] of each slide in group {batch} (mpp: the sheet's, or None)."""
    return [[s, IMAGE[s], MASK[s], MPP[s]] for s in BATCHES["zarr"][wildcards.batch]]


def slide_mpp(wildcards):
    """The sample sheet's mpp of slide {slide}; None: the slide's metadata or convert.default_mpp."""
    return MPP[wildcards.slide]


def slide_stores(stage):
    """Input function: the stores in results/{stage}/ of the slides in group {batch} of `stage`."""
    return lambda wildcards: [store("zarr", s) for s in BATCHES[stage][wildcards.batch]]


def convert_input(wildcards):
    """Image and (if annotated) mask file of one slide."""
    slide = wildcards.slide
    return {"image": IMAGE[slide], **({"mask": MASK[slide]} if MASK[slide] else {})}


def slide_image(wildcards):
    """The sample sheet's image of slide {slide} (a file, or a DICOM WSI folder)."""
    return IMAGE[wildcards.slide]


def slide_prediction(wildcards):
    """The predict job output holding slide {slide}'s prediction store."""
    return job_outputs("predictions", [wildcards.slide])


def prediction_store(wildcards):
    """Slide {slide}'s prediction store."""
    return store("predictions", wildcards.slide)


def report_settings():
    """Config `report` minus the keys of the per-slide jobs (DICOM Segmentation, review)."""
    return {k: v for k, v in config["report"].items() if k not in SLIDE_JOB_KEYS}


def train_settings():
    """The train job's settings: the decisive `train` keys minus those the workflow
    itself handles (folds)."""
    return {k: v for k, v in decisive_train_keys().items() if k != "folds"}


FOLDS = config["train"]["folds"]
# one training run per fold (models/{model}/fold{fold}/) or a single one (models/{model}/)
TRAIN_RUN = "{model}/fold{fold}" if FOLDS else "{model}"
TRAIN_LABEL = (
    "{wildcards.model} fold {wildcards.fold}" if FOLDS else "{wildcards.model}"
)


def train_split(wildcards):
    """Slides a training run learns from and validates on: the sample sheet's
    train/val split, or with `train.folds: k` the slides of fold {fold} for validation.
    """
    if FOLDS:
        return fold_split(
            slides("train", "val"), FOLDS, int(wildcards.fold), config["seed"]
        )
    return slides("train"), slides("val")


def train_patches(wildcards):
    """The patch jobs' outputs that a training run needs."""
    train, val = train_split(wildcards)
    return {"train": job_outputs("patches", train), "val": job_outputs("patches", val)}


def train_stores(wildcards):
    """The patch stores of the training and validation slides."""
    train, val = train_split(wildcards)
    return {
        "train": [store("patches", s) for s in train],
        "val": [store("patches", s) for s in val],
    }


def fold_outputs(name):
    """`name` (model.ckpt, metrics.csv) of every fold's run."""
    return [f"{RESULTS}/models/{MODEL}/fold{k}/{name}" for k in range(FOLDS)]


def model_checkpoints():
    """Checkpoint(s) that predict uses (several are averaged as an ensemble): one per fold with k-fold;
    those of `predict.model` when set."""
    if not TRAINING:
        return [str(c) for c in MODEL_SPEC.checkpoints]
    return (
        fold_outputs("model.ckpt")
        if FOLDS
        else [f"{RESULTS}/models/{MODEL}/model.ckpt"]
    )


def predict_settings():
    """Config `predict` minus the keys the workflow itself handles (model)."""
    return {k: v for k, v in config["predict"].items() if k != "model"}


def prediction_names():
    """Plain values naming the prediction stores' classes and recording their provenance."""
    return {
        "class_names": CLASS_NAMES,
        "class_name": config["report"]["class_name"],
        "config_hash": PREDICT_CONFIG_HASH,
    }


def card_settings():
    """What the model card records from the workflow: the config keys that decide the model
    (plain values; changing them retrains anyway) and the class names."""
    return {
        "config": {
            **{k: config[k] for k in ("seed", "convert", "patches")},
            "train": decisive_train_keys(),
        },
        "class_names": config["report"]["class_names"],
        "class_name": config["report"]["class_name"],
    }


def final_outputs():
    """What the `all` target asks for.  The report job's per-slide overlays and GeoJSON are two
    folders, so that a new slide reruns it (through its params) and Snakemake does not match every
    slide against that job; the model folder's files when training."""
    trained = [
        f"{RESULTS}/models/{MODEL}/{name}" for name in ("curves.png", "model.json")
    ]
    return [
        f"{RESULTS}/submission.csv",
        f"{RESULTS}/metrics.csv",
        f"{RESULTS}/overlays",
        f"{RESULTS}/geojson",
        *(trained if TRAINING else []),
        *(
            expand(f"{RESULTS}/dicom/{{slide}}.dcm", slide=predicted_slides())
            if config["report"]["dicom_seg"]
            else []
        ),
    ]
