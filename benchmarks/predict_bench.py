"""Inference benchmark: the pipeline alone (null model) vs reading the store, overhead vs the bare forward,
MONAI comparison, peak memory vs slide size.

Run:  python benchmarks/predict_bench.py [--quick] [--modes pipeline overhead monai memory rle] [--repeats 3]
      [--before OLD/src] [--out benchmarks/results/predict.json]

``--before`` runs an older wsiseg's ``predict_slide`` (its ``src/`` folder, e.g. from
``git archive REV src | tar -x -C /tmp/old``) side by side with this one.  Compared
commands alternate ``--repeats`` times; results keep every run and the medians.

Every measurement runs in its own subprocess (``_child``) so peak RSS
(``ru_maxrss``) belongs to that measurement alone.  Ratios are measured side
by side in one run on the same machine.  Needs ``pip install -e .[bench]``
(MONAI) for the comparison.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import zarr

import wsiseg  # noqa: F401  (first: sets wsiseg's OpenMP wait policy before torch loads, as the CLI does)
from wsiseg.nn.module import SegmentationModule
from wsiseg.store.chunks import compressor, create_level
from wsiseg.store.ngff import multiscales
from wsiseg.store.pyramid import build_pyramid, level_count

TINY = dict(encoder_depth=3, decoder_channels=[16, 8, 4])
DEMO = dict(encoder_depth=4, decoder_channels=[128, 64, 32, 16])


def make_slide(path: Path, size: int, chunk: int = 512) -> Path:
    """A size x size synthetic slide store (pink tissue with dark blobs), written chunk by chunk."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:chunk, 0:chunk]
    texture = np.full((chunk, chunk, 3), (232, 158, 198), np.uint8)
    for _ in range(6):
        cy, cx, r = rng.integers(60, chunk - 60, 2).tolist() + [int(rng.integers(20, 60))]
        texture[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (150, 78, 138)
    root = zarr.open_group(path, mode="w", zarr_format=2)
    level0 = create_level(root, "0", (3, size, size), chunk, compressor())
    tile = texture.transpose(2, 0, 1)

    def write_row(y: int) -> None:
        for x in range(0, size, chunk):
            h, w = min(chunk, size - y), min(chunk, size - x)
            level0[:, y : y + h, x : x + w] = tile[:, :h, :w]

    with ThreadPoolExecutor(os.cpu_count()) as pool:  # rows of chunks in parallel (each thread its own chunks)
        list(pool.map(write_row, range(0, size, chunk)))
    levels = level_count(size, size, chunk)
    build_pyramid(root, levels, chunk, compressor(), "mean")
    root.update_attributes({"multiscales": multiscales("bench", levels, "mean"), "wsiseg": {"slide_id": "bench"}})
    return path


class NullModel(torch.nn.Module):
    """A model that costs nothing: the first input channel as the logit (the pipeline alone is timed)."""

    def __init__(self, downscale: float):
        super().__init__()
        from pytorch_lightning.utilities.parsing import AttributeDict

        self.hparams = AttributeDict(downscale=downscale, classes=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


class PointModel(NullModel):
    """One 1x1 convolution (3 -> 1 channels): a model about as cheap as the pipeline around it."""

    def __init__(self, downscale: float):
        super().__init__(downscale)
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


LIGHT = {"null": NullModel, "conv1x1": PointModel}


def _model(args: dict) -> torch.nn.Module:
    """The measured model: a light one by name, else the checkpoint."""
    if args.get("light"):
        return LIGHT[args["light"]](args["downscale"]).eval()
    from wsiseg.nn.module import load_model

    return load_model(args["ckpt"])


def make_checkpoint(path: Path, downscale: float, net: dict) -> Path:
    """An untrained checkpoint in wsiseg's format (weights do not change the cost)."""
    torch.manual_seed(0)
    module = SegmentationModule(downscale=downscale, patch_size=512, **net)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


class _StepRecords(logging.Handler):
    """Keeps the step times predict logs (``step_seconds``: each thread's time per step, see ``wsiseg.utils.logs.StepTimes``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.seconds.update(getattr(record, "step_seconds", {}))


def _child(kind: str, args: dict) -> dict:
    """Run one measurement in this (fresh) process and return time, CPU time and peak RSS."""
    torch.set_num_threads(args.get("threads", 2))
    model = _model(args) if kind in ("predict", "forward") else None
    import wsiseg.predict  # noqa: F401  (imports are not timed)
    import wsiseg.store.slide  # noqa: F401

    device = torch.device(args.get("device", "cpu"))
    if kind == "forward":  # warm-up outside the clock: cuDNN picks its kernels on the first batches
        model = model.to(device)
        batch = torch.randn(args["batch"], 3, args["tile"], args["tile"], device=device)
        if args.get("channels_last"):
            model = model.to(memory_format=torch.channels_last)
            batch = batch.contiguous(memory_format=torch.channels_last)
        if device.type == "cuda":
            _forward(model, batch, 3 * len(batch))
    start, cpu, epoch = time.perf_counter(), time.process_time(), time.time()
    extra: dict = {}
    if kind == "predict":
        from wsiseg.predict import PredictParams, predict_slide

        params = PredictParams(
            tile=args["tile"], overlap=args["overlap"], batch_size=args["batch"], min_tissue=0.0, device=device.type
        )
        models = [model] if args.get("light") else None
        steps = _StepRecords()
        logging.getLogger("wsiseg.predict").addHandler(steps)
        logging.getLogger("wsiseg.predict").setLevel(logging.INFO)
        predict_slide(args["slide"], args["ckpt"], args["out"], params, models=models)
        extra["tiles"] = int(np.prod([len(v) for v in _grid(args)]))
        extra["steps"] = {
            name: round(seconds, 3) for name, seconds in steps.seconds.items()
        }  # where predict's time went
    elif kind == "forward":  # the model alone on as many random tiles, in the given memory layout
        n = int(np.prod([len(v) for v in _grid(args)]))
        _forward(model, batch, n)
        extra["tiles"] = n
    elif kind == "read":  # the floor: every level-0 chunk of the slide read and decoded, in full-width row bands
        from wsiseg.store.slide import SlideStore

        store = SlideStore(args["slide"])
        for y in range(0, store.height, 512):
            store.read_image(y, 0, (min(512, store.height - y), store.width))
    elif kind == "monai":
        from monai.inferers import sliding_window_inference

        from wsiseg.nn.data import to_tensor
        from wsiseg.nn.module import load_model

        model = load_model(args["ckpt"])
        image = np.asarray(zarr.open_group(args["slide"], mode="r")["0"][:]).transpose(1, 2, 0)
        with torch.inference_mode():
            prob = sliding_window_inference(
                to_tensor(image)[None],
                (args["tile"], args["tile"]),
                args["batch"],
                lambda x: torch.sigmoid(model(x)),
                overlap=args["overlap"] / args["tile"],
                mode="gaussian",
            )
        mask = (prob[0, 0] > 0.5).numpy()
        extra["foreground"] = float(mask.mean())
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        extra["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return {
        "seconds": round(seconds, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "epoch": [epoch, epoch + seconds],
        "mpx_s": round(args["size"] ** 2 / seconds / 1e6, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        **extra,
    }


def _forward(model: torch.nn.Module, batch: torch.Tensor, n: int) -> None:
    """Forward passes (and sigmoids) over ``n`` tiles in batches of ``batch`` (the last one smaller); mixed
    precision (float16) on a GPU, as predict runs."""
    with torch.inference_mode(), torch.autocast(batch.device.type, enabled=batch.device.type == "cuda"):
        for start in range(0, n, len(batch)):
            torch.sigmoid(model(batch[: n - start]))
    if batch.device.type == "cuda":
        torch.cuda.synchronize()


def _grid(args: dict) -> tuple[list[int], list[int]]:
    from wsiseg.patches import grid_positions

    side = int(np.ceil(args["size"] / args["downscale"]))
    g = grid_positions(side, args["tile"], args["tile"] - args["overlap"])
    return g, g


def measure(kind: str, src: str | None = None, label: str = "", **args) -> dict:
    """Run ``kind`` in a subprocess (with ``src`` first on the path: e.g. an older wsiseg); return its JSON result."""
    code = f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import predict_bench as b; print(json.dumps(b._child({kind!r}, json.loads(sys.argv[1]))))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args, default=str)], capture_output=True, text=True, env=env
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{label or kind:16s} {args.get('size')}px: {out}", flush=True)
    return out


def side_by_side(runs: dict[str, dict], repeats: int) -> dict:
    """Alternate the measurements ``runs`` (name -> measure() keywords) ``repeats`` times; every run and the medians."""
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for i in range(repeats):
        for name, kw in runs.items():
            if "out" in kw:  # a fresh output per run: replacing the last one would time deleting it (Snakemake
                out = Path(kw["out"])  # deletes a job's outputs before it starts); all removed at the end
                kw = {**kw, "out": out.parent / "runs" / f"{out.stem}_{i}{out.suffix}"}
            results[name].append(measure(label=name, **kw))
    for run in (Path(kw["out"]).parent / "runs" for kw in runs.values() if "out" in kw):
        shutil.rmtree(run, ignore_errors=True)
    medians = {
        name: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "cpu_s", "mpx_s", "peak_rss_mb")}
        for name, rs in results.items()
    }
    print(json.dumps(medians), flush=True)
    return {"median": medians, "runs": results}


def pipeline(work: Path, size: int, repeats: int, before: str | None) -> dict:
    """Null model: the pipeline alone, beside reading the store and the null model's bare forward (downscale 1 and 2)."""
    slide = make_slide(work / f"null_{size}.zarr", size)
    ckpt = make_checkpoint(work / "tiny_ds1.ckpt", 1.0, TINY)
    report = {}
    for ds in (1.0, 2.0):
        common = dict(slide=slide, ckpt=ckpt, tile=512, overlap=128, batch=8, size=size, downscale=ds, light="null")
        runs = {
            "read": dict(kind="read", **common),
            "predict": dict(kind="predict", out=work / "null.zarr", **common),
            "forward": dict(kind="forward", **common),
        }
        if before:
            runs["predict_before"] = dict(kind="predict", out=work / "null_b.zarr", src=before, **common)
        report[f"downscale_{ds:g}"] = side_by_side(runs, repeats)
    return report


def overhead(
    work: Path, size: int, light: str | None, net: dict | None, ds: float, repeats: int, before: str | None
) -> dict:
    """predict_slide vs the bare forward of the same model on as many tiles (NCHW and channels_last)."""
    slide = make_slide(work / f"overhead_{size}.zarr", size)
    ckpt = make_checkpoint(work / f"demo_ds{ds:g}.ckpt", ds, net or TINY)
    common = dict(slide=slide, ckpt=ckpt, tile=512, overlap=128, batch=4, size=size, downscale=ds, light=light)
    runs = {
        "predict": dict(kind="predict", out=work / "o.zarr", **common),
        "forward": dict(kind="forward", **common),
        "forward_cl": dict(kind="forward", channels_last=True, **common),
        "read": dict(kind="read", **common),
    }
    if before:
        runs["predict_before"] = dict(kind="predict", out=work / "o_b.zarr", src=before, **common)
    result = side_by_side(runs, repeats)
    m = result["median"]
    bare = min(m["forward"]["seconds"], m["forward_cl"]["seconds"])
    result["ratio"] = round(m["predict"]["seconds"] / bare, 3)
    # Where the model and the pipeline share the same cores (the CPU), predict cannot take less than the
    # forward plus reading the store, the least the pipeline does: the ratio no pipeline can beat here.
    result["read_plus_forward_ratio"] = round((m["read"]["seconds"] + bare) / bare, 3)
    return result


def parse_with_common(parser: argparse.ArgumentParser, out: str) -> tuple[argparse.Namespace, Path]:
    """Add the options every inference benchmark takes (--before, --out, --workdir), parse, and make the work folder."""
    parser.add_argument(
        "--before", default=None, help="an older wsiseg src/ folder: its predict_slide runs side by side"
    )
    parser.add_argument("--out", default=out)
    parser.add_argument(
        "--workdir", default=None, help="where the synthetic slides and predictions go (default: a temp dir)"
    )
    opts = parser.parse_args()
    work = Path(opts.workdir or tempfile.mkdtemp(prefix="wsiseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    return opts, work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller slides (a smoke run)")
    parser.add_argument(
        "--modes",
        nargs="+",
        default=["pipeline", "overhead", "monai", "memory", "rle"],
        choices=["pipeline", "overhead", "monai", "memory", "rle"],
    )
    parser.add_argument("--repeats", type=int, default=3)
    opts, work = parse_with_common(parser, "benchmarks/results/predict.json")
    sizes = (4096, 8192) if opts.quick else (8192, 40000)
    report: dict = {
        "machine": platform.platform(),
        "cpu_threads": 2,
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    if Path(opts.out).exists():  # keep the sections not rerun
        report = {**json.loads(Path(opts.out).read_text()), **report}

    if "pipeline" in opts.modes:  # 0. the pipeline alone (null model) vs reading the store
        report["pipeline"] = pipeline(work, 4096 if opts.quick else 8192, opts.repeats, opts.before)

    if "overhead" in opts.modes:  # 1. full pipeline vs the bare forward on the same tiles
        report["overhead"] = {
            "conv1x1": overhead(work, 4096 if opts.quick else 8192, "conv1x1", None, 1.0, opts.repeats, opts.before),
            "demo_unet": overhead(work, 2048 if opts.quick else 4096, None, DEMO, 2.0, opts.repeats, opts.before),
        }

    if "monai" in opts.modes:  # 2. MONAI sliding_window_inference on an in-memory image vs wsiseg on the same store
        tiny = make_checkpoint(work / "tiny_ds1.ckpt", 1.0, TINY)
        report["monai"] = []
        for size in (2048, 4096) if opts.quick else (4096, 8192):
            slide = make_slide(work / f"monai_{size}.zarr", size)
            args = dict(slide=slide, ckpt=tiny, tile=256, overlap=64, batch=8, size=size, downscale=1.0)
            ours = measure("predict", out=work / f"m{size}.zarr", **args)
            theirs = measure("monai", **args)
            report["monai"].append(
                {
                    "size_px": size,
                    "wsiseg": ours,
                    "monai": theirs,
                    "time_ratio": round(theirs["seconds"] / ours["seconds"], 3),
                }
            )

    if (
        "memory" in opts.modes
    ):  # 3. peak RSS of predict at two slide sizes (null model, downscale 1: the most level-0 work)
        tiny4 = make_checkpoint(work / "tiny_ds4.ckpt", 4.0, TINY)
        report["memory"] = []
        for size in sizes:
            slide = make_slide(work / f"mem_{size}.zarr", size)
            run = measure(
                "predict",
                slide=slide,
                ckpt=tiny4,
                out=work / f"p{size}.zarr",
                tile=512,
                overlap=64,
                batch=8,
                size=size,
                downscale=1.0,
                light="null",
            )
            report["memory"].append({"size_px": size, **run})

    if "rle" in opts.modes and (work / f"p{sizes[-1]}.zarr").exists():  # 4. chunk-wise RLE of the largest prediction
        from wsiseg.report import encode_store

        start = time.perf_counter()
        encoded = encode_store(work / f"p{sizes[-1]}.zarr")
        report["rle"] = {"size_px": sizes[-1], "seconds": round(time.perf_counter() - start, 2), "chars": len(encoded)}
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
