"""Measure wsiseg on the field's public tables (GlaS glands, MoNuSeg nuclei): validation numbers per condition.

The workflow's own stages, as ``recipe_bench.py``: ``convert_slide`` -> ``extract_patches`` ->
``train_model`` -> ``predict_slide`` -> metrics, on the real data in ``../shared/data``:

* ``glas``: the 85 GlaS training images (775x522 px at 20x, 0.62 um/px: the GlaS paper rescaled its scans to
  0.620 um/px; the PNGs state no pixel size, so convert is told), instance-label masks (one id per gland);
  ``--split N`` picks ACC-UNet's published 68/17 train/val split ``published_splits/acc_unet_expN_*.txt``.
* ``monuseg``: the 30 MoNuSeg 2018 training tiles (1000x1000 px at 40x, ~0.25 um/px), ``splits.csv``'s
  24 train / 6 val (UCTransNet's division).  Its masks are binary (0/255): touching nuclei are one blob, so the
  instance "truth" is the mask's 8-connected components and contour-aware training learns blob outlines only.

The test sets are held out of the project: every number is on the **validation** images, which also chose the
checkpoint (best epoch by val Dice on the validation patches), so they are optimistic against a test set.

Conditions (:data:`CONDITIONS`): each a dict of ``patches`` / ``train`` / ``predict`` overrides of the dataset's
baseline (:data:`DATASETS`): ``baseline`` (U-Net from scratch, BCE + Dice, AdamW, cosine, flips/rot90,
``predict.split_objects: null``), ``watershed`` (baseline + distance-transform watershed splitting) and
``contour`` (baseline + ``train.contour_weight: 1.0`` + ``predict.split_objects: contour``, DCAN-style).
Converted stores and patches are made once in ``--work`` and shared; a model is trained once per distinct
patch + train settings (``watershed`` reuses ``baseline``'s model; only its predict settings differ).

Metrics per validation image, then averaged over images:

(a) ``dice``: pixel Dice of the predicted mask (``predict_slide``'s level 0, the image's own size) against the
    ground-truth mask > 0 at full resolution.
(b) ``dice_224``: the protocol of the published tables (UCTransNet, UDTransNet, ACC-UNet: those papers train and
    predict on images resized to 224x224 and report per-image Dice there).  wsiseg predicts at its own
    resolution, so here: wsiseg's full-resolution prediction mask resized to 224x224 with nearest neighbour,
    against the ground-truth mask resized to 224x224 with nearest neighbour; Dice per image (1 when both are
    empty), averaged over images.  It is not the papers' pipeline (their model sees a 224x224 image); it only
    puts our masks on their scoring grid.
(c) object metrics (:mod:`wsiseg.imaging.objects`) at full resolution: truth = the mask image's labels (GlaS:
    its gland ids; MoNuSeg: 8-connected components of the binary mask), prediction = the 8-connected
    components of the predicted mask (which ``split_objects`` has carved apart): ``glas_f1`` (GlaS challenge
    F1: > 50 % of a gland covered), ``object_dice``, ``object_hausdorff`` (level-0 px; ``object_hausdorff_um``
    in um), ``aji``, ``pq``, and ``object_f1`` (F1 of one-to-one matches at IoU > 0.5, = ``dq``).
(d) training wall time, the val Dice curve per epoch and its best epoch (the checkpoint kept).

Usage::

    python benchmarks/tables_bench.py --dataset glas --split 1 --epochs 6 --conditions baseline,watershed,contour \\
        --work /tmp/tables_work --out benchmarks/results/tables_glas_split1.json
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import math
import os
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from skimage.measure import label

from wsiseg.convert import convert_slide
from wsiseg.imaging.objects import ObjectOverlap
from wsiseg.patches import PatchParams, extract_patches
from wsiseg.predict import PredictParams, predict_slide
from wsiseg.store.prediction import Prediction
from wsiseg.train import TrainParams, train_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PROTOCOL_SIDE = 224  # the published tables' image side (UCTransNet / UDTransNet / ACC-UNet)

# U-Net from scratch (no pretrained weights can be downloaded here): config/examples/monuseg.yaml's recipe
# (BCE + Dice, lr 1e-3, cosine, flips/rot90) with resnet18 instead of resnet34 to fit a 2-core CPU.
MODEL = dict(
    arch="Unet",
    encoder="resnet18",
    encoder_weights=None,
    encoder_depth=5,
    decoder_channels=(256, 128, 64, 32, 16),
    batch_size=8,
    lr=1e-3,
    loss={"bce": 1.0, "dice": 1.0},
    scheduler="cosine",
    augment={"hflip": 0.5, "vflip": 0.5, "rot90": 0.5},
    accelerator="cpu",
    num_workers=0,
    resume=False,
)
DATASETS: dict[str, dict] = {
    "glas": {
        "mpp": 0.62,  # GlaS paper: scans rescaled to 0.620 um/px (20x); the PNGs carry no pixel size
        # 1.86 um/px (downscale 3), 128 px patches (238 um, about half an image's height), stride size/2: what a
        # shared 2-core CPU trains in minutes an epoch (256 px at 1.24 um/px took over 9 min an epoch there).  The
        # published tables' 224x224 resize puts GlaS at 2.3-3.5 um/px, coarser still
        "patches": dict(
            size=128, downscale=3, stride=64, min_coverage=0.01, max_coverage=1.0, negative_ratio=0.2, min_tissue=0
        ),
        # each 775x522 image is one tile at the model's resolution (258x174, padded to 512)
        "predict": dict(tile=512, overlap=128, min_tissue=0, device="cpu", split_min_distance_um=25.0),
    },
    "monuseg": {
        "mpp": 0.25,  # 40x TCGA crops (the PNGs carry no pixel size)
        # 0.5 um/px, 128 px (64 um; stain_bench's nuclei geometry) to fit the CPU (config/examples/monuseg.yaml
        # trains 256 px at 0.25 um/px)
        "patches": dict(
            size=128, downscale=2, stride=128, min_coverage=0.01, max_coverage=1.0, negative_ratio=0.2, min_tissue=0
        ),
        "predict": dict(tile=512, overlap=128, min_tissue=0, device="cpu", split_min_distance_um=3.0),
    },
}
CONDITIONS: dict[str, dict] = {
    "baseline": {"predict": {"split_objects": None}},
    # glands: seeds 25 um apart (DATASETS' split_min_distance_um); nuclei 3 um
    "watershed": {"predict": {"split_objects": "watershed"}},
    "contour": {"train": {"contour_weight": 1.0}, "predict": {"split_objects": "contour"}},
    # the same models, predicted objects under 500 um^2 (a disc of 25 um) removed: fragments are false
    # positives of the GlaS F1
    "baseline+min_area": {"predict": {"split_objects": None, "min_area_um2": 500.0}},
    "contour+min_area": {
        "train": {"contour_weight": 1.0},
        "predict": {"split_objects": "contour", "min_area_um2": 500.0},
    },
    # interior markers where the contour probability is below 0.8 instead of 0.5: fewer, larger markers
    "contour+min_area+t0.8": {
        "train": {"contour_weight": 1.0},
        "predict": {"split_objects": "contour", "min_area_um2": 500.0, "contour_threshold": 0.8},
    },
}
SAME_RUN = ("dataset", "split", "train_images", "val_images", "epochs", "model")  # --out's conditions merge if equal
METRICS = (
    "dice",
    "dice_224",
    "glas_f1",
    "object_dice",
    "object_hausdorff",
    "object_hausdorff_um",
    "aji",
    "pq",
    "object_f1",
    "objects_true",
    "objects_pred",
)


def glas_split(data: Path, split: int) -> dict[str, list[str]]:
    """ACC-UNet's published GlaS split ``split``: {train, val: image ids}."""
    lists = data / "published_splits"
    return {
        part: (lists / f"acc_unet_exp{split}_{part.capitalize()}.txt").read_text().split() for part in ("train", "val")
    }


def monuseg_split(data: Path) -> dict[str, list[str]]:
    table = pd.read_csv(data / "splits.csv", dtype=str)
    return {part: sorted(table.loc[table["split"].str.strip() == part, "id"]) for part in ("train", "val")}


def convert_all(data: Path, ids: list[str], work: Path, mpp: float) -> dict[str, Path]:
    """Slide stores {id: store}, converted once into ``work/slides``."""
    stores = {}
    for sid in ids:
        stores[sid] = work / "slides" / f"{sid}.zarr"
        if not stores[sid].exists():
            convert_slide(
                data / "images" / f"{sid}.png",
                stores[sid],
                mask=data / "masks" / f"{sid}.png",
                slide_id=sid,
                mpp=mpp,
                chunk=512,
            )
    return stores


def key(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def make_patches(
    stores: dict[str, Path], ids: list[str], work: Path, params: PatchParams, settings: dict
) -> tuple[list[Path], int]:
    """Patch stores of ``ids`` (cached per patch ``settings``: the harness's, not every field of ``params``,
    which grows as wsiseg does) and their total patch count."""
    folder = work / "patches" / key(settings)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps(asdict(params), default=str))
    out, count = [], 0
    for sid in ids:
        zarr_path, csv = folder / f"{sid}.zarr", folder / f"{sid}.csv"
        if not zarr_path.exists():
            extract_patches(stores[sid], zarr_path, csv, params)
        out.append(zarr_path)
        count += len(pd.read_csv(csv))
    return out, count


def train_once(
    stores: dict[str, Path],
    split: dict[str, list[str]],
    work: Path,
    patches: PatchParams,
    train: TrainParams,
    settings: dict,
) -> tuple[Path, dict]:
    """The model folder for these patch + train ``settings`` (the harness's), trained unless an earlier condition
    (or run) already did."""
    model_dir = work / "models" / key(settings)
    record = model_dir / "bench.json"
    if record.exists():
        return model_dir, json.loads(record.read_text())
    train_stores, n_train = make_patches(stores, split["train"], work, patches, settings["patches"])
    val_stores, n_val = make_patches(stores, split["val"], work, patches, settings["patches"])
    start = time.perf_counter()
    metrics = train_model(train_stores, val_stores, model_dir, train, threads=torch.get_num_threads())
    seconds = time.perf_counter() - start
    curve = [round(float(v), 4) for v in metrics["val_dice"]]
    info = {
        "train_s": round(seconds, 1),
        "train_patches": n_train,
        "val_patches": n_val,
        "val_dice_curve": curve,
        "best_epoch": int(np.nanargmax(curve)),  # 0-based: the checkpoint model.ckpt holds
        "best_val_dice": max(curve),
        "load_1min_after": os.getloadavg()[0],
    }
    record.write_text(json.dumps(info, indent=1))
    return model_dir, info


def truth_labels(path: Path, dataset: str) -> np.ndarray:
    """Instance ids of a ground-truth mask image: GlaS's gland ids, MoNuSeg's 8-connected components."""
    mask = np.asarray(Image.open(path))
    if mask.ndim == 3:
        mask = mask[..., 0]
    return label(mask > 0, connectivity=2) if dataset == "monuseg" else mask.astype(np.int32)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2 * int((pred & truth).sum()) / total


def image_metrics(pred_mask: np.ndarray, truth: np.ndarray, mpp: float) -> dict[str, float]:
    """(a), (b) and (c) of the module doc for one image."""
    pred, gt = pred_mask > 0, truth > 0
    side = (PROTOCOL_SIDE, PROTOCOL_SIDE)
    small_pred = cv2.resize(pred.astype(np.uint8), side, interpolation=cv2.INTER_NEAREST) > 0
    small_gt = cv2.resize(gt.astype(np.uint8), side, interpolation=cv2.INTER_NEAREST) > 0
    overlap = ObjectOverlap(truth, label(pred, connectivity=2))
    values = overlap.scores()
    n = overlap.n_truth + overlap.n_pred
    return {
        "dice": dice(pred, gt),
        "dice_224": dice(small_pred, small_gt),
        "glas_f1": values["glas_f1"],
        "object_dice": values["object_dice"],
        "object_hausdorff": values["object_hausdorff"],
        "object_hausdorff_um": values["object_hausdorff"] * mpp,
        "aji": values["aji"],
        "pq": values["pq"],
        "object_f1": 1.0 if n == 0 else 2 * overlap.matches(0.5) / n,
        "objects_true": overlap.n_truth,
        "objects_pred": overlap.n_pred,
    }


def run_condition(name: str, dataset: str, data: Path, stores: dict, split: dict, work: Path, epochs: int) -> dict:
    spec, change = DATASETS[dataset], CONDITIONS[name]
    settings = {
        "patches": {**spec["patches"], **change.get("patches", {})},
        "train": {**MODEL, "epochs": epochs, **change.get("train", {})},
    }
    patches, train = PatchParams(**settings["patches"]), TrainParams(**settings["train"])
    predict = PredictParams(**{**spec["predict"], **change.get("predict", {})})
    model_dir, trained = train_once(stores, split, work, patches, train, settings)
    rows = []
    start = time.perf_counter()
    for sid in split["val"]:
        out = work / "pred" / dataset / name / f"{sid}.zarr"
        if not out.exists():
            predict_slide(stores[sid], model_dir, out, predict)
        truth = truth_labels(data / "masks" / f"{sid}.png", dataset)
        pred = Prediction(out).mask_plane(0)[: truth.shape[0], : truth.shape[1]]
        if pred.shape != truth.shape:
            raise SystemExit(f"{out}: prediction {pred.shape} is not the image's shape {truth.shape}")
        rows.append({"image": sid, **image_metrics(pred, truth, spec["mpp"])})
    table = pd.DataFrame(rows)
    means = {k: clean(float(table[k].mean())) for k in METRICS}  # NaN Hausdorff (one side empty) left out
    return {
        "model": model_dir.name,
        "settings": {
            "patches": asdict(patches),
            "train": {k: v for k, v in asdict(train).items() if k in (*MODEL, "epochs", "contour_weight")},
            "predict": asdict(predict),
        },
        **trained,
        "predict_s": round(time.perf_counter() - start, 1),
        "mean": means,
        "per_image": [{k: clean(v) for k, v in r.items()} for r in rows],
    }


def clean(value):
    """A value for the JSON: floats rounded, NaN as null."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value.item() if isinstance(value, np.generic) else value


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "src")
    return git("rev-parse", "HEAD") + (" (src modified)" if dirty else "")


def cell(value: float | None, digits: int) -> str:
    return f"{'-':>11}" if value is None else f"{value:>11.{digits}f}"


def print_table(result: dict) -> None:
    columns = ("dice", "dice_224", "glas_f1", "object_dice", "object_hausdorff", "object_f1", "aji", "pq")
    print(f"{'condition':<10} " + " ".join(f"{c[:11]:>11}" for c in columns) + f" {'train s':>8} {'best ep':>7}")
    for name, run in result["conditions"].items():
        values = " ".join(cell(run["mean"][c], 1 if c == "object_hausdorff" else 4) for c in columns)
        print(f"{name:<10} {values} {run['train_s']:>8.0f} {run['best_epoch']:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=list(DATASETS), default="glas")
    parser.add_argument("--data", type=Path, default=None, help="dataset folder (default: ../shared/data/DATASET)")
    parser.add_argument("--split", type=int, default=1, help="GlaS: ACC-UNet's published split 1, 2 or 3")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--conditions", default="baseline,watershed,contour", help="comma-separated names")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine may be shared)")
    parser.add_argument("--work", type=Path, required=True, help="working folder (stores, patches, models)")
    parser.add_argument("--out", type=Path, required=True, help="JSON; an earlier run's other conditions are kept")
    args = parser.parse_args()
    names = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = sorted(set(names) - set(CONDITIONS))
    if unknown:
        parser.error(f"unknown condition(s) {unknown}; choose from {list(CONDITIONS)}")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    data = args.data or SHARED / args.dataset
    if not (data / "images").is_dir():
        raise SystemExit(f"{data}: {args.dataset} not found (see ../shared/data/{args.dataset}/SOURCE.md)")
    split = glas_split(data, args.split) if args.dataset == "glas" else monuseg_split(data)
    work = args.work / args.dataset
    stores = convert_all(data, split["train"] + split["val"], work, DATASETS[args.dataset]["mpp"])
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_1min_start": os.getloadavg()[0],
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "setup": {
            "dataset": args.dataset,
            "data": str(data),
            "split": f"acc_unet_exp{args.split}" if args.dataset == "glas" else "splits.csv",
            "train_images": split["train"],
            "val_images": split["val"],
            "mpp": DATASETS[args.dataset]["mpp"],
            "epochs": args.epochs,
            "model": MODEL,
            "conditions": {n: CONDITIONS[n] for n in names},
            "protocol_224": "prediction mask and GT mask each resized to 224x224 (nearest), Dice per image, mean",
            "note": "validation images (also chose the checkpoint), not the held-out test set",
        },
        "conditions": {},
    }
    earlier = json.loads(args.out.read_text()) if args.out.exists() else {}
    same = json.loads(json.dumps({k: result["setup"][k] for k in SAME_RUN}, default=str))  # tuples as lists
    if {k: earlier.get("setup", {}).get(k) for k in SAME_RUN} == same:
        result["conditions"] = earlier["conditions"]  # the same run's other conditions are kept
        result["setup"]["conditions"] = {**earlier["setup"]["conditions"], **result["setup"]["conditions"]}
    kept = earlier.get("runs", []) if result["conditions"] else []
    this_run = {k: result[k] for k in ("date", "git_commit", "machine")} | {"conditions": names}
    result["runs"] = [*kept, this_run]  # each invocation that wrote conditions to this file: when, where, which
    for name in names:
        run = run_condition(name, args.dataset, data, stores, split, work, args.epochs)
        run["load_1min"] = os.getloadavg()[0]
        result["conditions"][name] = run
        print(f"{name}: train {run['train_s']} s (best epoch {run['best_epoch']}), {run['mean']}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=lambda v: None if v is None else str(v)))
    print_table(result)


if __name__ == "__main__":
    main()
