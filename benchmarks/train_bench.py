"""Benchmark training throughput against data-loader throughput (is the loader the bottleneck?).

Builds real patch stores (demo slides -> convert -> patches) at each patch
size, then measures on the same stores:

* ``loader``: images/s of the training DataLoader alone (zarr read + decode,
  default augmentation, normalisation, collation), with ``num_workers`` 0 and 2;
* ``loader_raw`` and ``device_augment``: the device path (``train.augment_on: device``): the loader
  reading uint8 patches only, and the same augmentation + normalisation run on whole batches on the
  device (a GPU when there is one); the path delivers the smaller of the two;
* ``train``: images/s of Lightning training steps (forward, loss, backward,
  AdamW) of the demo model, data loading included (``--train-workers``), first
  batch (warm-up) excluded; 16-mixed precision on a GPU, 32 on CPU;
* ``consume``: the same training steps on batches already in memory: what
  training consumes when loading costs nothing.

The loader is not the bottleneck when its images/s is well above ``consume``.

Usage::

    python benchmarks/train_bench.py --sizes 128 256 --out benchmarks/results/train.json
    python benchmarks/train_bench.py --sizes 256 --batch 64 --workers 0 2 8 --train-workers 8 --out benchmarks/results/train_gpu.json  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch

from wsiseg.convert import convert_slide
from wsiseg.demo import DemoSpec, generate_demo
from wsiseg.nn.data import PatchDataModule
from wsiseg.patches import PatchParams, extract_patches
from wsiseg.train import TrainParams, _module, _patch_meta

# the demo's model (config.yaml): resnet18 U-Net, 4 encoder stages
MODEL = TrainParams(encoder_depth=4, decoder_channels=(128, 64, 32, 16), batch_size=16, accelerator="auto")
PRECISION = "16-mixed" if torch.cuda.is_available() else "32"


def patch_stores(work: Path, size: int) -> list[Path]:
    """Patch stores of ``size`` px from the 3 demo slides (every grid cell kept, stride size/2)."""
    demo = work / "demo"
    if not (demo / "samples.csv").exists():
        generate_demo(demo, DemoSpec(slides=3, height=1536, width=2048))
    stores = []
    for row in pd.read_csv(demo / "samples.csv").itertuples():
        slide = work / f"{row.slide_id}.zarr"
        if not slide.exists():
            convert_slide(row.image, slide, mask=row.mask, slide_id=row.slide_id)
        params = PatchParams(size=size, downscale=1, stride=size // 2, negative_ratio=0, random=10_000)
        stores.append(work / f"p{size}_{row.slide_id}.zarr")
        extract_patches(slide, stores[-1], work / f"p{size}_{row.slide_id}.csv", params)
    return stores


def endless(data: PatchDataModule):
    """The training DataLoader's batches, epoch after epoch (a new epoch's worker start-up included)."""
    while True:
        yield from data.train_dataloader()


def loader_rate(stores: list[Path], batch: int, workers: int, batches: int, raw: bool = False) -> float:
    """Images/s of iterating the training DataLoader alone (after its first batch); ``raw``: uint8 patches,
    unaugmented (the device path)."""
    data = PatchDataModule(stores, stores, batch, workers, MODEL.augment, seed=0, raw=raw)
    data.setup("fit")
    loader = endless(data)
    next(loader)  # worker start-up is not throughput
    start = time.perf_counter()
    seen = sum(len(next(loader)[0]) for _ in range(batches))
    return seen / (time.perf_counter() - start)


def device_augment_rate(stores: list[Path], batch: int, batches: int) -> float:
    """Images/s of :class:`~wsiseg.nn.device_augment.DeviceAugment` + normalisation on uint8 batches already on
    the device (the model's ``device_batch``)."""
    from wsiseg.nn.device_augment import DeviceAugment

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = PatchDataModule(stores, stores, batch, 0, MODEL.augment, seed=0, raw=True)
    data.setup("fit")
    x, y = next(iter(data.train_dataloader()))
    module = _module(MODEL, 1.0, None, int(x.shape[1]), 1).to(device)
    module.device_augment = DeviceAugment(MODEL.augment, seed=0)
    x, y = x.to(device), y.to(device)
    module.device_batch(x, y, 0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for k in range(batches):
        module.device_batch(x, y, k + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batches * len(x) / (time.perf_counter() - start)


class StepClock(pl.Callback):
    """Times training batches after the first."""

    def __init__(self):
        self.start, self.end, self.images = 0.0, 0.0, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if batch_idx == 0:
            self.start = now
        else:
            self.end, self.images = now, self.images + len(batch[0])


class Held:
    """Batches held in memory, served as one training loader (a bare list would be read as several loaders)."""

    def __init__(self, batches: list):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def train_rate(stores: list[Path], batch: int, workers: int, batches: int, work: Path, cached: bool = False) -> float:
    """Images/s of Lightning training steps of the demo model: loading included, or (``cached``) on
    ``batches + 1`` batches read beforehand and held in memory (what training consumes)."""
    pl.seed_everything(0, verbose=False)
    downscale, mpp, size, classes = _patch_meta(stores)
    data = PatchDataModule(stores, stores, batch, workers, MODEL.augment, seed=0)
    if cached:
        data.setup("fit")
        loader = endless(data)
        held = [next(loader) for _ in range(batches + 1)]
    clock = StepClock()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=batches + 1,
        limit_val_batches=0,
        accelerator=MODEL.accelerator,
        precision=PRECISION,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        default_root_dir=work,
    )
    module = _module(MODEL, downscale, mpp, size, classes)
    if cached:
        trainer.fit(module, train_dataloaders=Held(held))
    else:
        trainer.fit(module, datamodule=data)
    return clock.images / (clock.end - clock.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--train-batches", type=int, default=6)
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader num_workers to measure")
    parser.add_argument("--train-workers", type=int, default=0, help="num_workers of the training run")
    parser.add_argument("--out", default="benchmarks/results/train.json")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in args.sizes:
            stores = patch_stores(work, size)
            row = {"size": size, "batch": args.batch, "patches": sum(_count(s) for s in stores)}
            for workers in args.workers:
                row[f"loader_img_s_workers{workers}"] = round(
                    loader_rate(stores, args.batch, workers, args.loader_batches), 1
                )
            for workers in args.workers:
                row[f"loader_raw_img_s_workers{workers}"] = round(
                    loader_rate(stores, args.batch, workers, args.loader_batches, raw=True), 1
                )
            row["device_augment_img_s"] = round(device_augment_rate(stores, args.batch, args.loader_batches), 1)
            row["train_img_s"] = round(train_rate(stores, args.batch, args.train_workers, args.train_batches, work), 2)
            row["train_workers"] = args.train_workers
            row["consume_img_s"] = round(train_rate(stores, args.batch, 0, args.train_batches, work, cached=True), 2)
            for workers in args.workers:  # target (issue 17): loader with 2 workers >= 5x what training consumes (CPU)
                row[f"loader{workers}_over_consume"] = round(
                    row[f"loader_img_s_workers{workers}"] / row["consume_img_s"], 2
                )
            print(json.dumps(row), flush=True)
            results.append(row)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    report = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "precision": PRECISION,
        "cpu_count": os.cpu_count(),
        "model": "Unet resnet18 depth 4, decoder (128, 64, 32, 16)",
        "load_average_1min": round(os.getloadavg()[0], 2),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def _count(store: Path) -> int:
    import zarr

    return zarr.open_group(store, mode="r")["images"].shape[0]


if __name__ == "__main__":
    main()
