"""Inference benchmark: overhead vs bare forward, MONAI comparison, peak memory vs slide size.

Run:  python benchmarks/predict_bench.py [--quick] [--out benchmarks/results/predict.json]

Every measurement runs in its own subprocess (``_child``) so peak RSS
(``ru_maxrss``) belongs to that measurement alone.  Ratios are measured side
by side in one run on the same machine.  Needs ``pip install -e .[bench]``
(MONAI) for the comparison.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from wsiseg.model import SegmentationModule
from wsiseg.store import build_pyramid, compressor, create_level, level_count, multiscales

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
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            h, w = min(chunk, size - y), min(chunk, size - x)
            level0[:, y : y + h, x : x + w] = tile[:, :h, :w]
    levels = level_count(size, size, chunk)
    build_pyramid(root, levels, chunk, compressor(), "mean")
    root.attrs.update({"multiscales": multiscales("bench", levels, "mean"), "wsiseg": {"slide_id": "bench"}})
    return path


def make_checkpoint(path: Path, downscale: float, net: dict) -> Path:
    """An untrained checkpoint in wsiseg's format (weights do not change the cost)."""
    torch.manual_seed(0)
    module = SegmentationModule(downscale=downscale, patch_size=512, **net)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def _child(kind: str, args: dict) -> dict:
    """Run one measurement in this (fresh) process and return time and peak RSS."""
    torch.set_num_threads(args.get("threads", 2))
    start = time.perf_counter()
    extra: dict = {}
    if kind == "predict":
        from wsiseg.predict import PredictParams, predict_slide

        params = PredictParams(tile=args["tile"], overlap=args["overlap"], batch_size=args["batch"], min_tissue=0.0)
        predict_slide(args["slide"], args["ckpt"], args["out"], params)
        extra["tiles"] = int(np.prod([len(v) for v in _grid(args)]))
    elif kind == "forward":
        from wsiseg.model import load_model

        model = load_model(args["ckpt"])
        n = int(np.prod([len(v) for v in _grid(args)]))
        batch = torch.randn(args["batch"], 3, args["tile"], args["tile"])
        with torch.inference_mode():
            for _ in range(0, n, args["batch"]):
                torch.sigmoid(model(batch))
        extra["tiles"] = n
    elif kind == "monai":
        from monai.inferers import sliding_window_inference

        from wsiseg.data import to_tensor
        from wsiseg.model import load_model

        model = load_model(args["ckpt"])
        image = np.asarray(zarr.open_group(args["slide"], mode="r")["0"][:]).transpose(1, 2, 0)
        with torch.inference_mode():
            prob = sliding_window_inference(
                to_tensor(image)[None], (args["tile"], args["tile"]), args["batch"],
                lambda x: torch.sigmoid(model(x)), overlap=args["overlap"] / args["tile"], mode="gaussian",
            )
        mask = (prob[0, 0] > 0.5).numpy()
        extra["foreground"] = float(mask.mean())
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), **extra}


def _grid(args: dict) -> tuple[list[int], list[int]]:
    from wsiseg.patches import grid_positions

    side = int(np.ceil(args["size"] / args["downscale"]))
    g = grid_positions(side, args["tile"], args["tile"] - args["overlap"])
    return g, g


def measure(kind: str, **args) -> dict:
    """Run ``kind`` in a subprocess; return its JSON result."""
    code = f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import predict_bench as b; print(json.dumps(b._child({kind!r}, json.loads(sys.argv[1]))))"
    result = subprocess.run([sys.executable, "-c", code, json.dumps(args, default=str)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{kind:8s} {args.get('size')}px: {out}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller slides (a smoke run)")
    parser.add_argument("--out", default="benchmarks/results/predict.json")
    parser.add_argument("--workdir", default=None, help="where the synthetic slides go (default: a temp dir)")
    opts = parser.parse_args()
    work = Path(opts.workdir or tempfile.mkdtemp(prefix="wsiseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = (4096, 8192) if opts.quick else (20000, 40000)
    report: dict = {"machine": platform.platform(), "cpu_threads": 2, "torch": torch.__version__, "cuda": torch.cuda.is_available()}

    # 1. overhead of the full pipeline vs the bare forward on the same tiles (demo-sized U-Net, downscale 2)
    side = 3072 if opts.quick else 6144
    slide = make_slide(work / f"overhead_{side}.zarr", side)
    ckpt = make_checkpoint(work / "demo_ds2.ckpt", 2.0, DEMO)
    common = dict(slide=slide, ckpt=ckpt, tile=512, overlap=128, batch=4, size=side, downscale=2.0)
    full = measure("predict", out=work / "o.zarr", **common)
    bare = measure("forward", **common)
    report["overhead"] = {"slide_px": side, "model": "Unet resnet18 depth 4", "tile": 512, "overlap": 128, "predict": full, "forward": bare,
                          "ratio": round(full["seconds"] / bare["seconds"], 3)}

    # 2. MONAI sliding_window_inference on an in-memory image vs wsiseg on the same store, tiny model, two sizes
    tiny = make_checkpoint(work / "tiny_ds1.ckpt", 1.0, TINY)
    report["monai"] = []
    for size in ((2048, 4096) if opts.quick else (4096, 8192)):
        slide = make_slide(work / f"monai_{size}.zarr", size)
        args = dict(slide=slide, ckpt=tiny, tile=256, overlap=64, batch=8, size=size, downscale=1.0)
        ours = measure("predict", out=work / f"m{size}.zarr", **args)
        theirs = measure("monai", **args)
        report["monai"].append({"size_px": size, "wsiseg": ours, "monai": theirs, "time_ratio": round(theirs["seconds"] / ours["seconds"], 3)})

    # 3. peak RSS of predict at two slide sizes (tiny model, downscale 4)
    tiny4 = make_checkpoint(work / "tiny_ds4.ckpt", 4.0, TINY)
    report["memory"] = []
    for size in sizes:
        slide = make_slide(work / f"mem_{size}.zarr", size)
        run = measure("predict", slide=slide, ckpt=tiny4, out=work / f"p{size}.zarr", tile=512, overlap=64, batch=4, size=size, downscale=4.0)
        report["memory"].append({"size_px": size, **run})

    # 4. chunk-wise RLE of the largest prediction
    from wsiseg.report import encode_store

    start = time.perf_counter()
    encoded = encode_store(work / f"p{sizes[-1]}.zarr")
    report["rle"] = {"size_px": sizes[-1], "seconds": round(time.perf_counter() - start, 2), "chars": len(encoded)}
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
