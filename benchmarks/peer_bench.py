"""Inference side by side with TIAToolbox's SemanticSegmentor: same model, same tiles, same machine.

Setup (once; a separate venv, TIAToolbox never becomes a wsiseg dependency):
      bash benchmarks/peers_setup.sh
Run:  benchmarks/.venv-peers/bin/python benchmarks/peer_bench.py [--quick] [--repeats 3]
      [--out benchmarks/results/peers.json] [--workdir DIR]

One synthetic slide (``predict_bench.make_slide``: a wsiseg zarr store) is also written as a
tiled, deflate-compressed TIFF (512 px tiles, the same pixels), which TIAToolbox opens as it
opens any generic tiled TIFF (OpenSlide).  The same untrained demo U-Net checkpoint
(``predict_bench.make_checkpoint`` with ``predict_bench.DEMO``, downscale 1) is predicted by

- wsiseg: ``predict_slide`` on the zarr store, ``PredictParams(tile=512, overlap=128,
  batch_size=4, min_tissue=0.0)``; writes its OME-NGFF prediction store (uint8
  probabilities + mask pyramid);
- TIAToolbox: ``SemanticSegmentor(model=<wsiseg model in a ModelABC>, batch_size=4)`` run in
  WSI mode on the TIFF with ``IOSegmentorConfig`` (512 px patches in and out, stride 384,
  baseline resolution), no tissue mask (``auto_get_mask=False``: every tile, as
  ``min_tissue=0``), ``output_type="zarr"`` with probabilities: its usual zarr output
  (float probabilities + the thresholded mask) on disk.  The wrapper's ``infer_batch`` applies
  wsiseg's normalisation (``wsiseg.nn.data.MEAN``/``STD``) and the sigmoid.

Each run is a fresh subprocess (CPU, 2 torch threads; imports are not timed, loading the
checkpoint is); the two alternate ``--repeats`` times.  Every run records wall and CPU seconds
and peak RSS (``ru_maxrss`` of that child).  Agreement: Dice between the two thresholded
(p > 0.5) masks, and the mean absolute difference of the probabilities.  wsiseg blends
overlapping tiles with a Gaussian window, TIAToolbox averages them, so they are close, not
identical; one more wsiseg run with ``blend="constant"`` (the plain average; recorded, not in
the medians) shows how much of the difference is the merge.  The model is untrained: its
probabilities sit near 0.5, so a small probability difference flips many mask pixels.
Results: every run, the medians and the time ratio (TIAToolbox / wsiseg).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_bench import DEMO, make_checkpoint, make_slide  # noqa: E402

TILE, OVERLAP, BATCH, THREADS = 512, 128, 4, 2
KEYS = ("seconds", "cpu_s", "peak_rss_mb")


def write_tiff(slide: Path, path: Path, tile: int = 512) -> Path:
    """The slide store's level 0 as a tiled (``tile`` px), deflate-compressed RGB TIFF, tile by tile."""
    import tifffile
    import zarr

    level0 = zarr.open_group(slide, mode="r")["0"]
    _, height, width = level0.shape

    def tiles():
        for y in range(0, height, tile):
            band = np.asarray(level0[:, y : y + tile, :]).transpose(1, 2, 0)
            for x in range(0, width, tile):
                block = np.zeros((tile, tile, 3), np.uint8)
                part = band[:, x : x + tile]
                block[: part.shape[0], : part.shape[1]] = part
                yield block

    tifffile.imwrite(
        path,
        tiles(),
        shape=(height, width, 3),
        dtype=np.uint8,
        tile=(tile, tile),
        photometric="rgb",
        compression="zlib",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    return path


def tia_model(checkpoint: str):
    """The wsiseg checkpoint as a TIAToolbox model: wsiseg's normalisation and sigmoid in ``infer_batch``."""
    import torch
    from tiatoolbox.models.models_abc import ModelABC

    from wsiseg.nn.data import MEAN, STD
    from wsiseg.nn.module import load_model

    class WsisegModel(ModelABC):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.as_tensor(MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.as_tensor(STD).view(1, 3, 1, 1))
            self.class_dict = {0: "background", 1: "foreground"}

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            """uint8-valued NHWC patches (as TIAToolbox's dataloader gives them) -> foreground probability NCHW."""
            x = images.to(torch.float32).permute(0, 3, 1, 2)
            return torch.sigmoid(self.net((x - self.mean) / self.std))

        @staticmethod
        def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, *, device: str) -> np.ndarray:
            model.eval()
            with torch.inference_mode():
                probs = model(batch_data.to(device))
            return probs.permute(0, 2, 3, 1).cpu().numpy()  # NHWC, one foreground channel

        @staticmethod
        def postproc(image):
            """Probabilities (..., 1) -> the binary mask (p > 0.5), as wsiseg thresholds."""
            return image[..., 0] > 0.5

    return WsisegModel(load_model(checkpoint)).eval()


def _child(kind: str, args: dict) -> dict:
    """One measurement in this (fresh) process: wall and CPU seconds, peak RSS."""
    import torch

    torch.set_num_threads(THREADS)
    if kind == "wsiseg":
        from wsiseg.predict import PredictParams, predict_slide
    else:
        from tiatoolbox.models.engine.io_config import IOSegmentorConfig
        from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor

        importlib.import_module("wsiseg.nn.module")  # imports are not timed
    start, cpu = time.perf_counter(), time.process_time()
    if kind == "wsiseg":
        params = PredictParams(
            tile=TILE,
            overlap=OVERLAP,
            batch_size=BATCH,
            min_tissue=0.0,
            device="cpu",
            blend=args.get("blend", "gaussian"),
        )
        predict_slide(args["slide"], args["ckpt"], args["out"], params)
    else:
        config = IOSegmentorConfig(
            input_resolutions=[{"units": "baseline", "resolution": 1.0}],
            output_resolutions=[{"units": "baseline", "resolution": 1.0}],
            patch_input_shape=(TILE, TILE),
            patch_output_shape=(TILE, TILE),
            stride_shape=(TILE - OVERLAP, TILE - OVERLAP),
        )
        segmentor = SemanticSegmentor(
            model=tia_model(args["ckpt"]), batch_size=BATCH, num_workers=0, device="cpu", verbose=False
        )
        segmentor.run(
            [Path(args["tiff"])],
            patch_mode=False,
            ioconfig=config,
            save_dir=args["out"],
            output_type="zarr",
            auto_get_mask=False,
            return_probabilities=True,
            overwrite=True,
        )
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def measure(kind: str, **args) -> dict:
    """Run ``kind`` in a fresh subprocess of this interpreter; its JSON result."""
    out = Path(args["out"])
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, json.dumps(args, default=str)],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    if result.returncode:
        raise RuntimeError(f"{kind} failed:\n{result.stderr[-4000:]}")
    run = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{kind:10s} {args['size']}px: {run}", flush=True)
    return run


def agreement(wsiseg_out: Path, tia_dir: Path, tiff: Path, size: int) -> dict:
    """Dice of the two masks, the mean and largest |probability difference| (TIAToolbox's canvas cropped to
    the slide), the same without the last tile row and column (wsiseg moves its last tile inside the
    slide, TIAToolbox pads its last tile past the edge with white), and the share of pixels whose
    probability lies within 0.02 of the 0.5 threshold (where a small difference flips the mask)."""
    import zarr

    ours = zarr.open_group(wsiseg_out, mode="r")
    mask_w = np.asarray(ours["labels/mask/0"][:]) > 0
    prob_w = np.asarray(ours["0"][0]).astype(np.float32) / 255
    theirs = zarr.open_group(tia_dir / (tiff.stem + ".zarr"), mode="r")
    mask_t = np.asarray(theirs["predictions"][:size, :size]).astype(bool)
    prob_t = np.asarray(theirs["probabilities"][:size, :size, 0], np.float32)
    inner = slice(0, size - TILE)  # both tile the same way here; the last tile row/column differs
    return {
        **_compare(mask_w, mask_t, prob_w, prob_t),
        "near_threshold_share": round(float((np.abs(prob_t - 0.5) < 0.02).mean()), 4),
        "foreground_wsiseg": round(float(mask_w.mean()), 4),
        "foreground_tiatoolbox": round(float(mask_t.mean()), 4),
        "tiatoolbox_output_shape": list(theirs["probabilities"].shape),
        "without_last_tile_row_and_column": _compare(
            mask_w[inner, inner], mask_t[inner, inner], prob_w[inner, inner], prob_t[inner, inner]
        ),
    }


def _compare(mask_a: np.ndarray, mask_b: np.ndarray, prob_a: np.ndarray, prob_b: np.ndarray) -> dict:
    """Dice of two masks (both empty: 1), mean and largest absolute difference of two probability maps."""
    total = int(mask_a.sum() + mask_b.sum())
    dice = 2 * np.logical_and(mask_a, mask_b).sum() / total if total else 1.0
    diff = np.abs(prob_a - prob_b)
    return {
        "dice": round(float(dice), 4),
        "mean_abs_prob_diff": round(float(diff.mean()), 4),
        "max_abs_prob_diff": round(float(diff.max()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 2048² slide (a smoke run) instead of 4096²")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/peers.json")
    parser.add_argument(
        "--workdir", default=None, help="where the slide, checkpoint and outputs go (default: a temp dir)"
    )
    parser.add_argument("--child", nargs=2, metavar=("KIND", "ARGS"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        print(json.dumps(_child(opts.child[0], json.loads(opts.child[1]))))
        return

    import tiatoolbox
    import torch

    load_start = [round(v, 2) for v in os.getloadavg()]
    work = Path(opts.workdir or tempfile.mkdtemp(prefix="wsiseg-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    size = 2048 if opts.quick else 4096
    slide = make_slide(work / f"slide_{size}.zarr", size)
    tiff = write_tiff(slide, work / f"slide_{size}.tif")
    ckpt = make_checkpoint(work / "demo_ds1.ckpt", 1.0, DEMO)
    common = dict(ckpt=ckpt, size=size)
    runs = {
        "wsiseg": dict(slide=slide, out=work / "wsiseg.zarr", **common),
        "tiatoolbox": dict(tiff=tiff, out=work / "tia", **common),
    }
    results: dict[str, list[dict]] = {name: [] for name in runs}
    for _ in range(opts.repeats):
        for name, kw in runs.items():
            results[name].append(measure(name, **kw))
    medians = {name: {k: statistics.median(r[k] for r in rs) for k in KEYS} for name, rs in results.items()}
    report = {
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": THREADS,
        "loadavg_at_start": load_start,
        "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "tiatoolbox": tiatoolbox.__version__,
        "slide_px": size,
        "tile": TILE,
        "overlap": OVERLAP,
        "stride": TILE - OVERLAP,
        "batch_size": BATCH,
        "model": {"arch": "wsiseg demo U-Net (untrained)", **DEMO, "downscale": 1.0},
        "median": medians,
        "runs": results,
        "time_ratio_tiatoolbox_over_wsiseg": round(medians["tiatoolbox"]["seconds"] / medians["wsiseg"]["seconds"], 3),
        "agreement": agreement(runs["wsiseg"]["out"], runs["tiatoolbox"]["out"], tiff, size),
    }
    # where the disagreement comes from: wsiseg once more with TIAToolbox's merge (plain average of the tiles)
    constant = measure("wsiseg", slide=slide, out=work / "wsiseg_constant.zarr", blend="constant", **common)
    report["agreement_constant_blend"] = {
        "wsiseg_run": constant,
        **agreement(work / "wsiseg_constant.zarr", runs["tiatoolbox"]["out"], tiff, size),
    }
    print(
        json.dumps(
            {
                k: report[k]
                for k in ("median", "time_ratio_tiatoolbox_over_wsiseg", "agreement", "agreement_constant_blend")
            }
        ),
        flush=True,
    )
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
