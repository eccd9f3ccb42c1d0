"""Benchmark the slide readers (tifffile, OpenSlide, wsidicom) on generated 20k² and 40k² slides.

For each size this writes one Aperio-SVS-style tiled JPEG slide (tile by
tile, never held in memory: the textures of ``convert_bench.py``), reads it
through tifffile and OpenSlide, and converts it with wsidicomizer to a DICOM
WSI folder (JPEG q90 tiles of 512², read back through wsidicom).  For each
backend, in a fresh interpreter each time (so the peak RSS is the run's own):

* ``read``: every level-0 pixel once, by the 4096² blocks convert reads
  (:meth:`SourceSlide.read_pieces`), MB/s of decoded RGB;
* ``convert``: :func:`wsiseg.convert.convert_slide` with ``reader`` set to the
  backend (default options), wall seconds;

each with its peak RSS (``VmHWM``).  Runs alternate between the backends
``--repeats`` times and medians are reported (the JSON keeps every run): the
machine is shared, so single runs are noisy.

Usage::

    python benchmarks/reader_bench.py --sizes 20000 40000 --out benchmarks/results/readers.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from convert_bench import TILE, median_run, tiles  # noqa: E402  (the same generated slide content)

BACKENDS = ("tifffile", "openslide", "dicom")
MPP = 0.25

CHILD = """
import json, re, sys, time
from pathlib import Path
from wsiseg.convert import convert_slide
from wsiseg.readers.slide import SourceSlide
task, path, out, reader = sys.argv[1:5]
start = time.perf_counter()
if task == "read":
    with SourceSlide(path, reader=reader) as slide:
        height, width = slide.shape
        side = 4096
        for y in range(0, height, side):
            for x in range(0, width, side):
                slide.read_pieces(y, min(height, y + side), x, min(width, x + side))
else:
    convert_slide(path, out, reader=reader)
seconds = time.perf_counter() - start
print(seconds, re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
"""


def make_svs(path: Path, size: int) -> None:
    """A ``size`` x ``size`` Aperio-style BigTIFF: 512² JPEG q90 tiles, ``MPP`` in the description."""
    desc = f"Aperio Image Library v12.0.15\r\n{size}x{size} [0,0 {size}x{size}] ({TILE}x{TILE}) JPEG/RGB Q=90|AppMag = 40|MPP = {MPP}"
    tifffile.imwrite(
        path,
        tiles(size),
        shape=(size, size, 3),
        dtype=np.uint8,
        photometric="rgb",
        bigtiff=True,
        tile=(TILE, TILE),
        compression="jpeg",
        compressionargs={"level": 90},
        description=desc,
        metadata=None,
    )


def make_dicom(source: Path, folder: Path) -> None:
    """A DICOM WSI folder of ``source`` (wsidicomizer through OpenSlide, JPEG q90 tiles of 512²)."""
    from wsidicom.codec import JpegSettings
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.wsidicomizer import SourceIdentifier

    WsiDicomizer.convert(
        source,
        folder,
        tile_size=TILE,
        workers=len(os.sched_getaffinity(0)),
        encoding=JpegSettings(quality=90),
        preferred_source=SourceIdentifier.OPENSLIDE,
        include_label=False,
        include_overview=False,
        include_thumbnail=False,
    )


def run(task: str, path: Path, out: Path, reader: str, size: int) -> dict:
    """One ``read`` or ``convert`` through ``reader`` in a fresh interpreter: seconds, MB/s of level-0 RGB, peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-c", CHILD, task, str(path), str(out), reader]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    shutil.rmtree(out, ignore_errors=True)
    seconds, kb = result.stdout.split()[-2:]
    return {
        "seconds": float(seconds),
        "mb_per_s": size * size * 3 / float(seconds) / 1e6,
        "peak_rss_mb": int(kb) / 1024,
    }


def bench(size: int, workdir: Path, repeats: int, backends: tuple[str, ...]) -> list[dict]:
    """Generate the slide (and its DICOM copy), measure every backend ``repeats`` times, delete the files."""
    svs, dicom = workdir / f"slide_{size}.svs", workdir / f"slide_{size}_dicom"
    start = time.perf_counter()
    make_svs(svs, size)
    made = {"svs_seconds": time.perf_counter() - start, "svs_mb": svs.stat().st_size / 1e6}
    if "dicom" in backends:
        start = time.perf_counter()
        make_dicom(svs, dicom)
        made |= {
            "dicom_seconds": time.perf_counter() - start,
            "dicom_mb": sum(f.stat().st_size for f in dicom.iterdir()) / 1e6,
        }
    paths = {"tifffile": svs, "openslide": svs, "dicom": dicom}
    runs: dict[tuple[str, str], list[dict]] = {}
    load = os.getloadavg()[0]
    try:
        for _ in range(repeats):
            for backend in backends:
                for task in ("read", "convert"):
                    runs.setdefault((backend, task), []).append(
                        run(task, paths[backend], workdir / "out.zarr", backend, size)
                    )
    finally:
        svs.unlink()
        shutil.rmtree(dicom, ignore_errors=True)
    rows = []
    for backend in backends:
        row = {"size": size, "backend": backend, "repeats": repeats, "load_average_before": load, **made}
        for task in ("read", "convert"):
            done = runs[(backend, task)]
            row[task] = {**median_run(done), "peak_rss_mb": max(r["peak_rss_mb"] for r in done)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 40000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--workdir", help="folder for the generated slides (default: a temporary folder)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "readers.json"))
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="reader-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = [row for size in args.sizes for row in bench(size, workdir, args.repeats, tuple(args.backends))]
    import openslide
    import wsidicom

    meta = {
        "machine": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "tifffile": tifffile.__version__,
        "openslide": openslide.__library_version__,
        "openslide_python": openslide.__version__,
        "wsidicom": wsidicom.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
