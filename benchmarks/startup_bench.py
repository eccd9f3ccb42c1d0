"""Benchmark the CLI's start-up: `--help` time and `wsiseg convert`'s peak memory without torch.

Each command runs in a fresh interpreter; its wall time and peak RSS (``ru_maxrss``
of that child, from ``os.wait4``) are measured.  Side by side, the same command
after importing what the CLI imported for every subcommand before it built only
the stage that runs (torch, Lightning and smp through ``wsiseg.train`` and
``wsiseg.predict``).  Commands alternate ``--repeats`` times; medians are reported.

Usage::

    python benchmarks/startup_bench.py --repeats 5 --out benchmarks/results/startup.json
"""

from __future__ import annotations

import argparse
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

EAGER = "import wsiseg.train, wsiseg.predict; "  # what every subcommand paid before


def run(code: str, cwd: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of ``python -c code`` in a fresh interpreter."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0,):
        raise RuntimeError(f"command failed ({status}): {code}")
    return seconds, usage.ru_maxrss / 1024


def cli(argv: list[str], eager: bool) -> str:
    """Python code running ``wsiseg argv`` (``eager``: after the old imports)."""
    return (EAGER if eager else "") + f"import sys; from wsiseg.cli import main; sys.exit(main({argv!r}))"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--side", type=int, default=4096, help="side of the RGB slide converted (px)")
    parser.add_argument("--out", default="benchmarks/results/startup.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        image = np.random.default_rng(0).integers(0, 256, (args.side, args.side, 3), dtype=np.uint8)
        tifffile.imwrite(work / "slide.tif", image, tile=(512, 512), photometric="rgb", compression="zlib")
        del image
        commands = {
            "wsiseg --help": ["--help"],
            "wsiseg convert --help": ["convert", "--help"],
            f"wsiseg convert ({args.side}² tiled RGB)": ["convert", "slide.tif", "out.zarr"],
        }
        runs: dict[str, dict[str, list]] = {name: {"now": [], "eager": []} for name in commands}
        for _ in range(args.repeats):
            for name, argv in commands.items():
                for mode in ("now", "eager"):
                    if argv[0] == "convert" and len(argv) > 2:
                        subprocess.run(["rm", "-rf", str(work / "out.zarr")], check=True)
                    runs[name][mode].append(run(cli(argv, mode == "eager"), work))
    table = {
        name: {
            mode: {
                "seconds_median": statistics.median(s for s, _ in values),
                "peak_rss_mb_median": statistics.median(m for _, m in values),
                "runs": [{"seconds": round(s, 3), "peak_rss_mb": round(m, 1)} for s, m in values],
            }
            for mode, values in modes.items()
        }
        for name, modes in runs.items()
    }
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load": os.getloadavg(),
        },
        "repeats": args.repeats,
        "now": "the CLI builds and imports only the stage that runs",
        "eager": "the same command after importing wsiseg.train and wsiseg.predict, as every subcommand did before",
        "commands": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for name, modes in table.items():
        now, eager = modes["now"], modes["eager"]
        print(
            f"{name:34} now {now['seconds_median']:6.2f} s {now['peak_rss_mb_median']:7.0f} MB | "
            f"eager {eager['seconds_median']:6.2f} s {eager['peak_rss_mb_median']:7.0f} MB"
        )


if __name__ == "__main__":
    main()
