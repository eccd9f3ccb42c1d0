"""GPU benchmark (issue 17): slides per hour with a U-Net/resnet34 at 16-mixed, and how busy predict keeps the GPU.

Run on a machine with a CUDA GPU (on CPU it runs too, without utilisation samples: a smoke test)::

    python benchmarks/gpu_bench.py --size 40000 --out benchmarks/results/gpu_predict_40k.json [--repeats 2] [--workdir DIR]

On a synthetic all-tissue slide of ``--size``² (every tile is predicted: the worst case), for each
``--downscales`` (1: every level-0 pixel goes through the model; 2: the kidney recipes' scale), alternating
``--repeats`` times:

* ``predict``: :func:`wsiseg.predict.predict_slide` (float16 autocast, channels_last, tiles 512 px with 128
  px overlap, batch ``--batch``), while NVML samples the GPU's utilisation every 50 ms (the share of time a
  kernel ran, as ``nvidia-smi``'s utilization.gpu) over exactly the predict call;
* ``forward``: the bare model on as many random tiles in the same precision and layout: the floor.

``busy_pct`` is the mean sampled utilisation during predict (goal: >= 80); ``forward_share`` is forward ÷
predict time; ``slides_per_hour`` is 3600 ÷ the median predict time; ``predict_steps`` are the medians of
each predict thread's time per step, from predict's log (see the README's *How it works*).  Each measurement runs in its own
process (``predict_bench.measure``).  The training loader against 16-mixed training is
``benchmarks/train_bench.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch
from predict_bench import make_checkpoint, make_slide, measure, parse_with_common

import wsiseg  # noqa: F401  (first: sets wsiseg's OpenMP wait policy before torch loads, as the CLI does)

RESNET34 = dict(encoder="resnet34")  # the default U-Net: 5 encoder stages, decoder (256, 128, 64, 32, 16)


class Sampler:
    """GPU utilisation (%) sampled by NVML in a background thread, with wall-clock times."""

    def __init__(self, interval: float = 0.05):
        import pynvml

        pynvml.nvmlInit()
        self._nvml, self._handle, self.interval = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0), interval
        self.samples: list[tuple[float, int]] = []  # (time, utilisation %)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            self.samples.append((time.time(), int(rates.gpu)))
            time.sleep(self.interval)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, t0: float, t1: float) -> dict:
        """Mean and quartiles of the utilisation sampled in [t0, t1]."""
        busy = [u for t, u in self.samples if t0 <= t <= t1]
        if not busy:
            return {"busy_pct": None, "samples": 0}
        q = statistics.quantiles(busy, n=4) if len(busy) > 1 else [busy[0]] * 3
        return {"busy_pct": round(statistics.fmean(busy), 1), "busy_quartiles": q, "samples": len(busy)}


def run(kind: str, sampler: Sampler | None, src: str | None = None, **args) -> dict:
    """``measure`` one run (``src``: an older wsiseg's folder); with a ``sampler``, add the GPU utilisation sampled during it."""
    out = measure(kind, src, label=f"{kind}{'_before' if src else ''} ds{args['downscale']:g}", **args)
    if sampler is not None:
        out.update(sampler.between(*out["epoch"]))
        print(f"    GPU busy {out['busy_pct']}% over {out['samples']} samples", flush=True)
    return out


def bench_downscale(
    work: Path,
    slide: Path,
    size: int,
    ds: float,
    repeats: int,
    batch: int,
    threads: int,
    device: str,
    sampler: Sampler | None,
    before: str | None = None,
) -> dict:
    """``predict`` and ``forward`` alternated ``repeats`` times at downscale ``ds``; every run and the medians."""
    ckpt = make_checkpoint(work / f"unet_r34_ds{ds:g}.ckpt", ds, RESNET34)
    common = dict(
        slide=slide,
        ckpt=ckpt,
        tile=512,
        overlap=128,
        batch=batch,
        size=size,
        downscale=ds,
        threads=threads,
        device=device,
    )
    runs: dict[str, list[dict]] = {"predict": [], "forward": []}
    print(f"downscale {ds:g}, batch {batch}", flush=True)
    for i in range(repeats):
        runs["predict"].append(run("predict", sampler, out=work / f"pred_ds{ds:g}_{i}.zarr", **common))
        runs["forward"].append(run("forward", sampler, channels_last=True, **common))
        if before:  # an older wsiseg's predict_slide, side by side
            runs.setdefault("predict_before", []).append(
                run("predict", sampler, out=work / f"before_ds{ds:g}_{i}.zarr", src=before, **common)
            )
    predict_s = statistics.median(r["seconds"] for r in runs["predict"])
    forward_s = statistics.median(r["seconds"] for r in runs["forward"])
    summary = {
        "predict_s": predict_s,
        "forward_s": forward_s,
        "forward_share": round(forward_s / predict_s, 3),
        "slides_per_hour": round(3600 / predict_s, 1),
        "mpx_s": round(size**2 / predict_s / 1e6, 1),
        "tiles": runs["predict"][0]["tiles"],
    }
    steps = [r["steps"] for r in runs["predict"] if r.get("steps")]
    if steps:  # each thread's time per step (predict's log): a launch-bound model thread vs a starved GPU
        summary["predict_steps"] = {name: round(statistics.median(s[name] for s in steps), 2) for name in steps[0]}
    if before:
        summary["predict_before_s"] = statistics.median(r["seconds"] for r in runs["predict_before"])
    if sampler is not None:
        for name, rs in runs.items():
            if name != "forward":
                summary[name.replace("predict", "busy_pct")] = statistics.median(r["busy_pct"] for r in rs)
    print(json.dumps(summary), flush=True)
    return {"median": summary, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40000, help="slide side in px (level 0)")
    parser.add_argument("--downscales", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[16], help="tiles per model call (each measured)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: every core)")
    opts, work = parse_with_common(parser, "benchmarks/results/gpu_predict_40k.json")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    report: dict = {
        "machine": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "precision": "16-mixed" if cuda else "32",
        "model": "Unet resnet34 (smp defaults), untrained",
        "size_px": opts.size,
        "tile": 512,
        "overlap": 128,
        "batch": opts.batch,
        "slide": "synthetic, all tissue: every tile predicted",
    }
    start = time.perf_counter()
    slide = make_slide(work / f"slide_{opts.size}.zarr", opts.size)
    report["make_slide_s"] = round(time.perf_counter() - start, 1)
    print(f"slide {opts.size}² made in {report['make_slide_s']} s", flush=True)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sampler = Sampler() if cuda else None
    with sampler or contextlib.nullcontext():
        for ds in opts.downscales:
            for batch in opts.batch:
                key = f"downscale_{ds:g}" + (f"_batch_{batch}" if len(opts.batch) > 1 else "")
                report[key] = bench_downscale(
                    work,
                    slide,
                    opts.size,
                    ds,
                    opts.repeats,
                    batch,
                    opts.threads or os.cpu_count() or 1,
                    device,
                    sampler,
                    opts.before,
                )
            out.write_text(
                json.dumps(report, indent=2, default=str)
            )  # written after each section: a cut-off run keeps them


if __name__ == "__main__":
    main()
