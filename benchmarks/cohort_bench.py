"""Benchmark the dry run (``snakemake -n``) of large cohorts: N slides, one job per slide or in groups.

A synthetic cohort is written once to a temporary folder: N tiny distinct TIFF files that
declare 512x512 RGB (zlib-compressed zeros, a few hundred bytes each), one Kaggle RLE table
annotating every train/val slide, and a sample sheet per N (the first N slides; 10 % train,
5 % val, the rest test).  For each N and each ``slides_per_job`` the full workflow's dry run
(``snakemake -n --quiet`` on this repository's Snakefile, the default config but for the
sheet) runs ``--repeats`` times in a fresh process; medians are reported.  A run past
``--timeout`` is recorded as such, and larger N of the same ``slides_per_job`` are skipped.

Usage::

    python benchmarks/cohort_bench.py --sizes 2000 10000 100000 --per-job 1 1000 --repeats 3

prints a table, the JSON to stdout, and writes it to ``--out`` (benchmarks/results/cohort.json).
``--profile N:PER_JOB`` instead runs one dry run under cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "workflow" / "Snakefile"
SIDE = 512


def template_tiff() -> bytes:
    """A SIDE x SIDE RGB tiled TIFF of zeros, zlib-compressed: the dry run reads only its header."""
    buffer = io.BytesIO()
    zeros = np.zeros((SIDE, SIDE, 3), np.uint8)
    tifffile.imwrite(buffer, zeros, tile=(SIDE, SIDE), photometric="rgb", compression="zlib")
    return buffer.getvalue()


def split_of(k: int) -> str:
    return "train" if k % 20 < 2 else "val" if k % 20 == 2 else "test"


def write_cohort(work: Path, count: int) -> None:
    """``count`` distinct slide files below ``work/slides`` and the RLE table of the labelled ones."""
    data = template_tiff()
    folder = work / "slides"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        (folder / f"s{k:06d}.tif").write_bytes(data)
    half = SIDE * SIDE // 2
    rows = [f"s{k:06d},{half} 64" for k in range(count) if split_of(k) != "test"]
    (work / "masks.csv").write_text("id,encoding\n" + "\n".join(rows) + "\n")


def write_run(work: Path, count: int, per_job: int) -> Path:
    """A run folder for the first ``count`` slides with ``slides_per_job: per_job``: its sheet and config."""
    run = work / f"run_{count}_{per_job}"
    (run / "config").mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,image,mask,split"]
    for k in range(count):
        split = split_of(k)
        mask = str(work / "masks.csv") if split != "test" else ""
        lines.append(f"s{k:06d},{work / 'slides' / f's{k:06d}.tif'},{mask},{split}")
    (run / "samples.csv").write_text("\n".join(lines) + "\n")
    config = {"results": "results", "samples": "samples.csv", "demo": {"enabled": False}, "slides_per_job": per_job}
    (run / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def command(run: Path, snakefile: Path = SNAKEFILE) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(run), "-n", "--quiet"]


def dry_run(run: Path, timeout: float, snakefile: Path = SNAKEFILE) -> float | None:
    """Seconds of one dry run in ``run`` (None past ``timeout``); raises when it fails."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(command(run, snakefile), cwd=run, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"dry run failed in {run}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def profile(run: Path, top: int = 30) -> None:
    """One dry run under cProfile; the ``top`` functions by cumulative and by own time."""
    import pstats

    out = run / "dry.prof"
    cmd = command(run)
    cmd[1:3] = ["-m", "cProfile", "-o", str(out), "-m", "snakemake"]
    subprocess.run(cmd, cwd=run, check=True)
    stats = pstats.Stats(str(out))
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(r"wsiseg|\.smk|Snakefile", top)  # our code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 100000])
    parser.add_argument("--per-job", type=int, nargs="+", default=[1, 1000], help="slides_per_job values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600, help="seconds before a dry run counts as too slow")
    parser.add_argument("--workdir", default=None, help="folder for the cohort (default: a temporary one)")
    parser.add_argument("--out", default="benchmarks/results/cohort.json")
    parser.add_argument("--profile", default=None, metavar="N:PER_JOB", help="profile one dry run instead")
    parser.add_argument("--skip", nargs="*", default=[], metavar="N:PER_JOB", help="combinations not to run")
    parser.add_argument(
        "--snakefile",
        default=str(SNAKEFILE),
        help="another checkout's workflow/Snakefile (e.g. an earlier commit from git archive; it imports its own src/)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.profile:
            count, per_job = map(int, args.profile.split(":"))
            write_cohort(work, count)
            profile(write_run(work, count, per_job))
            return
        start = time.perf_counter()
        write_cohort(work, max(args.sizes))
        written = time.perf_counter() - start
        runs: dict[str, dict] = {}
        for per_job in args.per_job:
            too_slow = False
            for count in sorted(args.sizes):
                name = f"{count} slides, slides_per_job {per_job}"
                if too_slow or f"{count}:{per_job}" in args.skip:
                    why = "a smaller N timed out" if too_slow else "--skip"
                    runs[name] = {"slides": count, "slides_per_job": per_job, "skipped": why}
                    continue
                run = write_run(work, count, per_job)
                seconds = []
                for _ in range(args.repeats):
                    took = dry_run(run, args.timeout, Path(args.snakefile))
                    if took is None:
                        too_slow = True
                        break
                    seconds.append(took)
                runs[name] = {
                    "slides": count,
                    "slides_per_job": per_job,
                    "seconds_median": round(statistics.median(seconds), 2) if seconds else None,
                    "runs": [round(s, 2) for s in seconds],
                    **({"timed_out_after": args.timeout} if too_slow else {}),
                }
                print(f"{name:38} {runs[name]['seconds_median']} s  {runs[name]['runs']}", file=sys.stderr, flush=True)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "what": "snakemake -n --quiet of the full workflow (default config, training) over a synthetic sheet: "
        "10 % train, 5 % val, 85 % test slides, 512x512 TIFFs, one RLE table",
        "snakefile": args.snakefile,
        "repeats": args.repeats,
        "cohort_written_seconds": round(written, 1),
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
