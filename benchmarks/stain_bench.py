"""Benchmark stain robustness and object-level quality on real H&E nuclei (gbm40).

Site A is the gbm40 set (40 real H&E crops of 512x512 px, ~0.25 um/px, 4,976 nucleus
contours as GeoJSON; ``../shared/data/gbm40``).  Site B is the same held-out crops
*restained*: each crop is colour-deconvolved into haematoxylin/eosin/DAB concentrations
(scikit-image's ``rgb2hed``), the concentrations are scaled (H x0.8, E x1.3) and recomposed
with another lab's stain vectors (:data:`SITE_B_STAINS`: a bluer haematoxylin, a more
orange eosin), so shapes and labels are identical and only the stain differs.

Crops gbm01-24 train, gbm25-28 validate, gbm29-40 are the test set on both sites.  Each
condition runs the workflow's own stages: ``convert_slide`` -> ``extract_patches`` (128 px
at downscale 2) -> ``train_model`` -> ``predict_slide`` -> ``slide_metrics``:

* ``none``: flips/rot90 only (the default augmentation);
* ``hed``: plus HED stain jitter (``train.augment.hed``);
* ``macenko`` / ``reinhard``: ``train.stain_normalise`` fitted on the training patches.

Per test crop and site it records pixel Dice/recall and object F1 (IoU > 0.5 against the
annotated nuclei), the latter also with ``predict.split_objects: watershed``; and, as a
trivial baseline, Otsu's threshold on the haematoxylin channel.

Usage::

    python benchmarks/stain_bench.py --epochs 10 --out benchmarks/results/stain.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from skimage.color import combine_stains, rgb2hed
from skimage.filters import threshold_otsu

from wsiseg.convert import convert_slide
from wsiseg.patches import PatchParams, extract_patches
from wsiseg.predict import PredictParams, predict_slide
from wsiseg.report import match_objects, scores, slide_metrics
from wsiseg.store.slide import SlideStore
from wsiseg.train import TrainParams, train_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gbm40"
SITE_B_STAINS = np.array(
    [[0.50, 0.80, 0.35], [0.05, 0.85, 0.45], [0.27, 0.57, 0.78]]
)  # rows: H, E, DAB optical density
SITE_B_SCALE = np.array([0.8, 1.3, 1.0])  # H, E, DAB concentration factors
SPLITS = {"train": range(1, 25), "val": range(25, 29), "test": range(29, 41)}
PATCHES = PatchParams(
    size=128, downscale=2, stride=64, min_coverage=0.01, max_coverage=1.0, negative_ratio=0.2, min_tissue=0.0
)
MODEL = dict(
    encoder="resnet18",
    encoder_depth=3,
    decoder_channels=(64, 32, 16),
    batch_size=16,
    lr=3e-3,
    accelerator="cpu",
    scheduler="cosine",
)
CONDITIONS = {
    "none": {},
    "hed": {"augment": {"hflip": 0.5, "vflip": 0.5, "rot90": 0.5, "hed": {"p": 0.8, "alpha": 0.2, "beta": 0.02}}},
    "macenko": {"stain_normalise": "macenko"},
    "reinhard": {"stain_normalise": "reinhard"},
}


def restain(image: np.ndarray) -> np.ndarray:
    """``image`` as site B would have stained it (see module doc)."""
    hed = rgb2hed(image) * SITE_B_SCALE
    return (np.clip(combine_stains(hed, SITE_B_STAINS), 0, 1) * 255 + 0.5).astype(np.uint8)


def crop_id(n: int) -> str:
    return f"gbm{n:02d}"


def prepare(data: Path, work: Path) -> dict[str, dict[str, Path]]:
    """Slide stores {site: {crop id: store}}: site A every crop, site B the test crops restained."""
    stores: dict[str, dict[str, Path]] = {"A": {}, "B": {}}
    for n in range(1, 41):
        cid = crop_id(n)
        image, geojson = data / "images" / f"{cid}.tif", data / "annotations" / f"{cid}.geojson"
        stores["A"][cid] = work / "A" / f"{cid}.zarr"
        if not stores["A"][cid].exists():
            convert_slide(image, stores["A"][cid], mask=geojson, slide_id=cid, chunk=256)
        if n in SPLITS["test"]:
            restained = work / "B" / f"{cid}.tif"
            restained.parent.mkdir(parents=True, exist_ok=True)
            stores["B"][cid] = work / "B" / f"{cid}.zarr"
            if not stores["B"][cid].exists():
                tifffile.imwrite(restained, restain(tifffile.imread(image)), compression="deflate")
                convert_slide(restained, stores["B"][cid], mask=geojson, slide_id=cid, chunk=256)
    return stores


def otsu_baseline(store: Path) -> dict[str, float]:
    """Pixel Dice and object F1 of Otsu's threshold on the haematoxylin concentration."""
    slide = SlideStore(store)
    image = np.asarray(slide.levels[0][:]).transpose(1, 2, 0)
    h = rgb2hed(image)[..., 0]
    mask = h > threshold_otsu(h)
    truth = slide.mask_plane(0) > 0
    tp, fp, fn = (mask & truth).sum(), (mask & ~truth).sum(), (~mask & truth).sum()
    nt, np_, matched = match_objects(mask.astype(np.uint8), slide.instance_plane(), 0.5, truth_instances=True)
    return {"dice": scores(tp, fp, fn)["dice"], "object_f1": 2 * matched / max(1, nt + np_)}


def run_condition(name: str, stores: dict[str, dict[str, Path]], work: Path, epochs: int, seed: int) -> dict:
    """Train under condition ``name``, predict the test crops of both sites, return per-crop metrics and timings."""
    patch_dir = work / "patches"
    patch_dir.mkdir(exist_ok=True)
    patch = {}
    for split in ("train", "val"):
        for n in SPLITS[split]:
            cid = crop_id(n)
            patch[cid] = patch_dir / f"{cid}.zarr"
            if not patch[cid].exists():
                extract_patches(stores["A"][cid], patch[cid], patch_dir / f"{cid}.csv", PATCHES)
    params = TrainParams(**MODEL, epochs=epochs, seed=seed, **CONDITIONS[name])
    start = time.perf_counter()
    metrics = train_model(
        [patch[crop_id(n)] for n in SPLITS["train"]],
        [patch[crop_id(n)] for n in SPLITS["val"]],
        work / "models" / name,
        params,
        threads=os.cpu_count(),
    )
    train_s = time.perf_counter() - start
    rows = []
    for site in ("A", "B"):
        for cid, store in stores[site].items():
            if int(cid[3:]) not in SPLITS["test"]:
                continue
            row = {"site": site, "crop": cid}
            for split_objects in (None, "watershed"):
                predict = PredictParams(
                    tile=256,
                    overlap=64,
                    min_tissue=0,
                    split_objects=split_objects,
                    split_min_distance_px=12,
                    device="cpu",
                )
                out = work / "pred" / name / site / f"{cid}{'_ws' if split_objects else ''}.zarr"
                predict_slide(store, work / "models" / name, out, predict)
                m = slide_metrics(out, store)
                if split_objects:
                    row["object_f1_watershed"] = m["object_f1"]
                else:
                    row.update({k: m[k] for k in ("dice", "precision", "recall", "object_f1")})
            rows.append(row)
    return {"train_s": round(train_s, 1), "val_dice": float(metrics["val_dice"].max()), "per_crop": rows}


def summarise(per_crop: list[dict]) -> dict[str, dict[str, float]]:
    """Mean per site of each metric (per-image means, as results/metrics.csv)."""
    table = pd.DataFrame(per_crop)
    return {
        site: {k: round(float(v), 4) for k, v in part.drop(columns=["site", "crop"]).mean().items()}
        for site, part in table.groupby("site")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stain.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (args.data / "images").is_dir():
        raise SystemExit(f"{args.data}: gbm40 not found (see ../shared/data/gbm40/SOURCE.md)")
    work = args.work or Path(tempfile.mkdtemp(prefix="stain_bench_"))
    stores = prepare(args.data, work)
    baseline = [
        {"site": site, "crop": cid, **otsu_baseline(store)}
        for site in ("A", "B")
        for cid, store in stores[site].items()
        if int(cid[3:]) in SPLITS["test"]
    ]
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]},
        "setup": {
            "data": "gbm40",
            "splits": {k: [crop_id(n) for n in v] for k, v in SPLITS.items()},
            "site_b": {"stains": SITE_B_STAINS.tolist(), "scale": SITE_B_SCALE.tolist()},
            "patches": PATCHES.__dict__,
            "model": MODEL,
            "epochs": args.epochs,
            "seed": args.seed,
            "conditions": {k: CONDITIONS[k] for k in args.conditions},
        },
        "otsu_haematoxylin": {"summary": summarise(baseline), "per_crop": baseline},
        "conditions": {},
    }
    print("otsu baseline", result["otsu_haematoxylin"]["summary"], flush=True)
    for name in args.conditions:
        run = run_condition(name, stores, work, args.epochs, args.seed)
        run["summary"] = summarise(run["per_crop"])
        result["conditions"][name] = run
        print(name, run["train_s"], "s", run["summary"], flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
