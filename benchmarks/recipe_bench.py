"""Check the training recipe on real H&E nuclei (gbm40): one factor at a time around a baseline.

Data and stages as ``stain_bench.py`` (site A only, no restaining): gbm40's real H&E crops
(512x512 px, ~0.25 um/px, nucleus contours as GeoJSON), run through ``convert_slide`` ->
``extract_patches`` -> ``train_model`` -> ``predict_slide`` -> ``slide_metrics``.  To fit a
CPU, a subset of stain_bench's split: gbm01-12 train, gbm25-28 validate, gbm29-36 test.

Baseline (:data:`BASE`): U-Net resnet18 depth 3 (stain_bench's model), patches 128 px at
downscale 2 (0.5 um/px), stride 32 (size/4), batch 8, AdamW lr 3e-3, cosine, BCE + Dice,
flips/rot90, a fixed number of epochs and seed.  Each condition in :data:`CONDITIONS` changes
one thing (a condition may also set its own epochs or seed; the geometry conditions keep the physical field of view or the pixel patch size, see
their comments).  Per condition: wall time of training, mean over the test crops of pixel Dice
and object F1 (IoU > 0.5 against the annotated nuclei), without and with
``predict.split_objects: watershed`` (seeds 12 px = 3 um at level 0).

Usage::

    python benchmarks/recipe_bench.py --epochs 3 --work /tmp/recipe_work --out benchmarks/results/recipe.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from stain_bench import DATA, MODEL, PATCHES, crop_id, summarise

from wsiseg.convert import convert_slide
from wsiseg.patches import extract_patches
from wsiseg.predict import PredictParams, predict_slide
from wsiseg.report import slide_metrics
from wsiseg.train import TrainParams, train_model

SPLITS = {"train": range(1, 13), "val": range(25, 29), "test": range(29, 37)}
BASE_PATCHES = replace(PATCHES, size=128, downscale=2, stride=32)
BASE = dict(MODEL, batch_size=8, lr=3e-3, scheduler="cosine", loss={"bce": 1.0, "dice": 1.0})
CONDITIONS: dict[str, dict] = {
    "baseline": {},
    "baseline, seed 1": {"seed": 1},  # run-to-run noise
    "stride 64 (size/2)": {"patches": {"stride": 64}},
    "stride 64, 9 epochs": {"patches": {"stride": 64}, "epochs": 9},  # as many steps as the baseline's 3 epochs
    # downscale 1 at the baseline's physical geometry (64 um field, 16 um stride): 256 px, stride 64
    "downscale 1, 256 px, stride 64": {"patches": {"downscale": 1, "size": 256, "stride": 64}},
    # patch size at downscale 1: 128 px (32 um field), stride 32 (size/4) would be 169 patches a crop; stride 64
    "downscale 1, 128 px, stride 64": {"patches": {"downscale": 1, "size": 128, "stride": 64}},
    "loss dice": {"train": {"loss": {"dice": 1.0}}},
    "loss focal + dice": {"train": {"loss": {"focal": 1.0, "dice": 1.0}}},
    "onecycle": {"train": {"scheduler": "onecycle"}},
    "lr 1e-3": {"train": {"lr": 1e-3}},
}


def prepare(data: Path, work: Path) -> dict[str, Path]:
    """Slide stores {crop id: store} of the crops the split uses."""
    stores = {}
    for n in sorted(set().union(*SPLITS.values())):
        cid = crop_id(n)
        stores[cid] = work / "A" / f"{cid}.zarr"
        if not stores[cid].exists():
            convert_slide(
                data / "images" / f"{cid}.tif",
                stores[cid],
                mask=data / "annotations" / f"{cid}.geojson",
                slide_id=cid,
                chunk=256,
            )
    return stores


def run_condition(name: str, stores: dict[str, Path], work: Path, epochs: int, seed: int, threads: int) -> dict:
    """Train under condition ``name``, predict the test crops; per-crop metrics, patch count and timings."""
    change = CONDITIONS[name]
    patches = replace(BASE_PATCHES, **change.get("patches", {}))
    patch_dir = work / "patches" / f"{patches.size}_{patches.downscale:g}_{patches.stride}"
    patch_dir.mkdir(parents=True, exist_ok=True)
    patch, n_patches = {}, 0
    for split in ("train", "val"):
        for n in SPLITS[split]:
            cid = crop_id(n)
            patch[cid] = patch_dir / f"{cid}.zarr"
            if not patch[cid].exists():
                extract_patches(stores[cid], patch[cid], patch_dir / f"{cid}.csv", patches)
            if split == "train":
                n_patches += sum(1 for _ in open(patch_dir / f"{cid}.csv")) - 1
    params = TrainParams(
        **{**BASE, **change.get("train", {})},
        epochs=change.get("epochs", epochs),
        seed=change.get("seed", seed),
        resume=False,
    )
    model_dir = work / "models" / name.replace(" ", "_").replace("/", "-").replace(",", "").replace("+", "p")
    start = time.perf_counter()
    metrics = train_model(
        [patch[crop_id(n)] for n in SPLITS["train"]],
        [patch[crop_id(n)] for n in SPLITS["val"]],
        model_dir,
        params,
        threads=threads,
    )
    train_s = time.perf_counter() - start
    rows = []
    tile = int(512 / patches.downscale)  # a whole crop in one tile, at the model's resolution
    for n in SPLITS["test"]:
        cid = crop_id(n)
        row = {"site": "A", "crop": cid}
        for split_objects in (None, "watershed"):
            predict = PredictParams(
                tile=tile, overlap=64, min_tissue=0, split_objects=split_objects, split_min_distance_px=12, device="cpu"
            )
            out = model_dir / "pred" / f"{cid}{'_ws' if split_objects else ''}.zarr"
            predict_slide(stores[cid], model_dir, out, predict)
            m = slide_metrics(out, stores[cid])
            if split_objects:
                row["object_f1_watershed"] = m["object_f1"]
            else:
                row.update({k: m[k] for k in ("dice", "precision", "recall", "object_f1")})
        rows.append(row)
    return {
        "patches": patches.__dict__,
        "train": {
            k: v for k, v in params.__dict__.items() if k in ("batch_size", "lr", "scheduler", "loss", "epochs", "seed")
        },
        "train_patches": n_patches,
        "train_s": round(train_s, 1),
        "val_dice": float(metrics["val_dice"].max()),
        "summary": summarise(rows)["A"],
        "per_crop": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine may be shared)")
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recipe.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    if not (args.data / "images").is_dir():
        raise SystemExit(f"{args.data}: gbm40 not found (see ../shared/data/gbm40/SOURCE.md)")
    work = args.work or Path(tempfile.mkdtemp(prefix="recipe_bench_"))
    stores = prepare(args.data, work)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    result.update(
        {
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "threads": args.threads,
                "load_1min": os.getloadavg()[0],
            },
            "setup": {
                "data": "gbm40",
                "splits": {k: [crop_id(n) for n in v] for k, v in SPLITS.items()},
                "patches": BASE_PATCHES.__dict__,
                "model": BASE,
                "epochs": args.epochs,
                "seed": args.seed,
                "conditions": CONDITIONS,
            },
        }
    )
    result.setdefault("conditions", {})
    for name in args.conditions:
        run = run_condition(name, stores, work, args.epochs, args.seed, args.threads)
        run["load_1min"] = os.getloadavg()[0]
        result["conditions"][name] = run
        print(f"{name}: {run['train_patches']} patches, {run['train_s']} s, {run['summary']}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
