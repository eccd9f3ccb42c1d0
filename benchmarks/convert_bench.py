"""Benchmark ``wsiseg convert`` against plain tifffile decoding on generated gigapixel TIFFs.

For each slide (generated tile by tile or strip by strip, never held in
memory) this measures, in one run and on the same file:

* ``decode``: plain tifffile decoding of every tile/strip of level 0
  (``TiffPage.segments`` with tifffile's default thread pool), MB/s of
  decoded RGB;
* ``convert``: :func:`wsiseg.convert.convert_slide` to an OME-NGFF store
  (level 0 + pyramid, Blosc-zstd), MB/s of level-0 RGB, and its peak RSS,
  run in a fresh subprocess so ``ru_maxrss`` is convert's alone.

Usage::

    python benchmarks/convert_bench.py --sizes 20000 40000 --out benchmarks/results/convert.json

Targets (issue 4): convert peak RSS < 1.5 GB at 40k x 40k, flat across sizes;
convert throughput >= 50% of plain decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import imagecodecs
import numpy as np
import tifffile

TILE = 512
STRIP_ROWS = 64


def texture_bank(count: int = 16, side: int = TILE, seed: int = 0) -> list[np.ndarray]:
    """Tissue-like RGB tiles (pink stroma, purple nuclei, pixel noise) plus a near-white background tile."""
    import cv2

    rng = np.random.default_rng(seed)
    bank = []
    for _ in range(count):
        field = cv2.GaussianBlur(rng.random((side, side), np.float32), (0, 0), 6)
        field = (field - field.min()) / (np.ptp(field) + 1e-6)
        stroma = np.array([230, 170, 200], np.float32) * (0.8 + 0.2 * field[:, :, None])
        nuclei = (cv2.GaussianBlur(rng.random((side, side), np.float32), (0, 0), 2) > 0.56)[:, :, None]
        tile = np.where(nuclei, np.array([120, 70, 160], np.float32), stroma)
        tile += rng.normal(0, 6, tile.shape)
        bank.append(np.clip(tile, 0, 255).astype(np.uint8))
    background = np.clip(240 + rng.normal(0, 3, (side, side, 3)), 0, 255).astype(np.uint8)
    return bank + [background]


def is_tissue(ty: int, tx: int, size: int) -> bool:
    """An elliptical 'tissue section' covering about 60% of the slide."""
    cy, cx = (ty + 0.5) / size - 0.5, (tx + 0.5) / size - 0.5
    return (cy / 0.45) ** 2 + (cx / 0.4) ** 2 < 1


def tiles(size: int) -> Iterator[np.ndarray]:
    """Tiles of a ``size`` x ``size`` slide in row-major order."""
    bank = texture_bank()
    for ty in range(0, size, TILE):
        for tx in range(0, size, TILE):
            k = (ty // TILE * 7 + tx // TILE * 3) % (len(bank) - 1)
            yield bank[k] if is_tissue(ty, tx, size) else bank[-1]


def strips(size: int) -> Iterator[bytes]:
    """Deflate-compressed strips of ``STRIP_ROWS`` rows of the same slide."""
    bank = texture_bank()
    for y0 in range(0, size, STRIP_ROWS):
        rows = min(STRIP_ROWS, size - y0)
        ty, dy = divmod(y0, TILE)
        band = np.empty((rows, size, 3), np.uint8)
        for tx in range(0, size, TILE):
            k = (ty * 7 + tx // TILE * 3) % (len(bank) - 1)
            tile = bank[k] if is_tissue(ty * TILE, tx, size) else bank[-1]
            band[:, tx : tx + TILE] = tile[dy : dy + rows, : size - tx]
        yield imagecodecs.deflate_encode(band, level=1)


def make_slide(path: Path, size: int, layout: str) -> None:
    """Write a generated RGB slide: ``tiled`` (512² JPEG tiles) or ``stripped`` (64-row deflate strips)."""
    common = dict(shape=(size, size, 3), dtype=np.uint8, photometric="rgb", bigtiff=True)
    if layout == "tiled":
        tifffile.imwrite(path, tiles(size), tile=(TILE, TILE), compression="jpeg", compressionargs={"level": 90}, **common)
    else:
        tifffile.imwrite(path, strips(size), rowsperstrip=STRIP_ROWS, compression="zlib", **common)


def plain_decode(path: Path) -> dict:
    """Decode every segment of level 0 with tifffile (default thread pool), as a user would."""
    start = time.perf_counter()
    decoded = 0
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        for segment, _, _ in page.segments(buffersize=32 * 2**20):
            decoded += segment.nbytes
        height, width = page.imagelength, page.imagewidth
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mb_per_s": height * width * 3 / seconds / 1e6}


CHILD = """
import json, resource, sys, time
from wsiseg.convert import convert_slide
start = time.perf_counter()
convert_slide(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def run_convert(path: Path, out: Path, size: int, options: dict) -> dict:
    """Convert in a fresh interpreter (``options``: convert_slide keywords); time it and read its peak RSS."""
    command = [sys.executable, "-c", CHILD, str(path), str(out), json.dumps(options)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, maxrss_kb = result.stdout.split()[-2:]
    seconds = float(seconds)
    store = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "seconds": seconds,
        "mb_per_s": size * size * 3 / seconds / 1e6,
        "peak_rss_mb": int(maxrss_kb) / 1024,
        "store_mb": store / 1e6,
    }


def bench(size: int, layout: str, workdir: Path, options: dict) -> dict:
    """Generate one slide, measure decode and convert side by side, delete the files."""
    path = workdir / f"{layout}_{size}.tif"
    start = time.perf_counter()
    make_slide(path, size, layout)
    generated = time.perf_counter() - start
    try:
        decode = plain_decode(path)
        convert = run_convert(path, workdir / f"{layout}_{size}.zarr", size, options)
    finally:
        path_mb = path.stat().st_size / 1e6
        path.unlink()
        shutil.rmtree(workdir / f"{layout}_{size}.zarr", ignore_errors=True)
    row = {
        "layout": layout,
        "convert_options": options,
        "size": size,
        "tiff_mb": path_mb,
        "generate_seconds": generated,
        "decode": decode,
        "convert": convert,
        "throughput_ratio": convert["mb_per_s"] / decode["mb_per_s"],
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 40000])
    parser.add_argument("--layouts", nargs="+", default=["tiled", "stripped"], choices=["tiled", "stripped"])
    parser.add_argument("--stripped-sizes", type=int, nargs="*", default=None, help="sizes for stripped (default: largest)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "convert.json")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--options", type=json.loads, default={}, help='convert_slide keywords as JSON, e.g. \'{"level": 5}\'')
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="wsiseg-bench-") as tmp:
        for layout in args.layouts:
            sizes = args.sizes if layout == "tiled" else (args.stripped_sizes or [max(args.sizes)])
            rows += [bench(size, layout, Path(tmp), args.options) for size in sizes]
    result = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(), "tifffile": tifffile.__version__},
        "targets": {"peak_rss_mb_below": 1536, "throughput_ratio_at_least": 0.5},
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
