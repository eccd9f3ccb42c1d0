"""RLE benchmark: ``wsiseg.rle.encode`` of a whole mask in memory, the banded path of the report, the Kaggle snippet.

Run:  python benchmarks/rle_bench.py [--sizes 20000 40000] [--repeats 3] [--kaggle-max 20000]
      [--before path/to/old_rle.py] [--out benchmarks/results/rle.json]

Each measurement runs in a fresh process that first draws the mask (glomerulus-like
discs, ~8% foreground, uint8 0/1; the same mask in every process), then resets its
peak-RSS counter (``/proc/self/clear_refs``), so ``extra_mb`` is the peak memory the
encoder needs beyond the mask.  ``banded`` encodes a prediction store's level-0 mask
(zarr, 512² chunks, predict's Blosc-lz4) with :func:`wsiseg.report.encode_store` (full-height column bands
read from the store; ``extra_mb`` there is the whole process's peak after imports).
``--before`` names an older ``rle.py`` to time side by side (e.g. extracted with
``git show REV:src/wsiseg/rle.py``).  Runs alternate; the summary gives medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_mask(size: int) -> np.ndarray:
    """A size x size uint8 mask of random discs (radius 40-400 px), drawn with OpenCV (seeded)."""
    import cv2

    rng = np.random.default_rng(0)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(int(1.5e-6 * size * size)):
        cx, cy = (int(v) for v in rng.integers(0, size, 2))
        cv2.circle(mask, (cx, cy), int(rng.integers(40, 400)), 1, -1)
    return mask


def kaggle(img: np.ndarray) -> str:
    """The HuBMAP Kaggle notebooks' encoder, verbatim."""
    pixels = img.T.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def _rss(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def _child(kind: str, args: dict) -> dict:
    if kind == "banded":
        from wsiseg.report import encode_store

        base = _rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        start = time.perf_counter()
        text = encode_store(args["store"])
    else:
        mask = make_mask(args["size"])
        if kind == "kaggle":
            fn = kaggle
        else:
            if kind == "before":
                spec = importlib.util.spec_from_file_location("rle_before", args["before"])
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
            else:
                from wsiseg import rle as module
            fn = module.encode
        base = _rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        start = time.perf_counter()
        text = fn(mask)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 2),
        "extra_mb": round(_rss("VmHWM") - base, 1),
        "chars": len(text),
        "sha": __import__("hashlib").sha1(text.encode()).hexdigest()[:12],
    }


def measure(kind: str, **args) -> dict:
    code = (
        f"import json,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import rle_bench as b; "
        f"print(json.dumps(b._child({kind!r}, json.loads(sys.argv[1]))))"
    )
    result = subprocess.run([sys.executable, "-c", code, json.dumps(args, default=str)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    out = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"{kind:8s} {args.get('size')}px: {out}", flush=True)
    return out


def write_store(path: Path, size: int) -> Path:
    """A prediction store holding :func:`make_mask` as its level-0 mask (512² chunks, Blosc-lz4 unshuffled: predict's codec)."""
    import zarr

    from wsiseg.store.chunks import compressor, create_level
    from wsiseg.store.ngff import LABEL_AXES, multiscales

    mask = make_mask(size)
    root = zarr.open_group(path, mode="w", zarr_format=2)
    group = root.create_group("labels").create_group("mask")
    create_level(group, "0", mask.shape, 512, compressor("lz4", 5, "none"))[:] = mask
    group.attrs["multiscales"] = multiscales("mask", 1, "max", LABEL_AXES)
    root.attrs["multiscales"] = group.attrs["multiscales"]
    create_level(root, "0", (1, 1, 1), 512, compressor("zstd", 1))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 40000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--kaggle-max", type=int, default=20000, help="largest size for the Kaggle snippet (13.7 GB at 40k²)"
    )
    parser.add_argument("--before", default=None, help="an older rle.py to time side by side")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default="benchmarks/results/rle.json")
    opts = parser.parse_args()
    work = Path(opts.workdir or tempfile.mkdtemp(prefix="wsiseg-rle-"))
    report: dict = {"machine": platform.platform(), "sizes": {}}
    for size in opts.sizes:
        store = write_store(work / f"mask_{size}.zarr", size)
        kinds = (
            ["wsiseg", "banded"] + (["before"] if opts.before else []) + (["kaggle"] if size <= opts.kaggle_max else [])
        )
        runs: dict[str, list[dict]] = {k: [] for k in kinds}
        for _ in range(opts.repeats):
            for kind in kinds:
                runs[kind].append(measure(kind, size=size, store=store, before=opts.before))
        assert len({r["sha"] for rs in runs.values() for r in rs}) == 1, "encoders disagree"
        summary = {
            k: {"seconds": statistics.median(r["seconds"] for r in rs), "extra_mb": max(r["extra_mb"] for r in rs)}
            for k, rs in runs.items()
        }
        report["sizes"][str(size)] = {"median": summary, "runs": runs}
        print(size, json.dumps(summary), flush=True)
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
