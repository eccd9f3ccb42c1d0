"""Benchmark ``wsiseg convert`` against plain tifffile decoding on generated gigapixel TIFFs.

For each slide (generated tile by tile or strip by strip, never held in
memory) this measures, in one run and on the same file:

* ``decode``: plain tifffile decoding of every tile/strip of level 0
  (``TiffPage.segments`` with tifffile's default thread pool), MB/s of
  decoded RGB;
* ``convert``: :func:`wsiseg.convert.convert_slide` to an OME-NGFF store
  (level 0 + pyramid, default options: Blosc-lz4), MB/s of level-0 RGB, and
  its peak RSS (the largest of the runs), each run in a fresh subprocess so
  the peak is convert's alone;
* ``write_floor``: writing as many files of the store's total size the way
  convert writes chunks, in one thread.

Decode (tifffile's default threads, then all cores) and convert alternate ``--repeats`` times
(default 3) and the medians are reported with every run's time, since shared machines are noisy;
each run also records its CPU seconds (``cpu_ratios_all_cores``: the all-core decode's CPU time
over convert's, which a shared machine's load moves much less than wall times).

Usage::

    python benchmarks/convert_bench.py --sizes 20000 40000 --out benchmarks/results/convert_lossless_synthetic.json

``real`` slides are tiled JPEG (q90) mosaics of real H&E crops (``--real-sizes``, from
``../shared/data/gbm40``, generated at benchmark time into the temporary folder): real tissue
compresses and decodes differently from generated texture.  Each row also gives the store's
size over the TIFF's (``store_to_tiff``) and the PSNR of level 0 against tifffile's decode
(``psnr_db``; infinite for lossless codecs).  ``--options '{"compression": "jpeg"}'`` measures
the compact store mode.

Targets (issue 4): convert peak RSS < 1.5 GB at 40k x 40k, flat across sizes;
convert throughput >= 50% of plain decoding.  Issue 17 (``compression: jpeg``): store at most
1.5x the TIFF on real texture, PSNR >= 40 dB, convert >= 0.8x tifffile's 2-thread decode.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
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


def slide_tile(bank: list[np.ndarray], y: int, x: int, size: int) -> np.ndarray:
    """The tile whose top-left pixel is (y, x): one of the tissue textures, or background."""
    k = (y // TILE * 7 + x // TILE * 3) % (len(bank) - 1)
    return bank[k] if is_tissue(y, x, size) else bank[-1]


def tiles(size: int) -> Iterator[np.ndarray]:
    """Tiles of a ``size`` x ``size`` slide in row-major order."""
    bank = texture_bank()
    for y in range(0, size, TILE):
        for x in range(0, size, TILE):
            yield slide_tile(bank, y, x, size)


GBM40 = Path(__file__).resolve().parents[2] / "shared" / "data" / "gbm40" / "images"


def real_tiles(size: int, folder: Path = GBM40) -> Iterator[np.ndarray]:
    """Tiles of a ``size`` x ``size`` mosaic of real H&E crops (gbm40: 40 crops of 512², each in one of 8
    flips/rotations, seeded) inside the same tissue outline as :func:`tiles`, background elsewhere."""
    crops = [tifffile.imread(f) for f in sorted(folder.glob("*.tif"))]
    if not crops:
        raise SystemExit(f"no real H&E crops in {folder} (gbm40); run without --real-sizes")
    background = texture_bank(1)[-1]
    rng = np.random.default_rng(0)
    for y in range(0, size, TILE):
        for x in range(0, size, TILE):
            if not is_tissue(y, x, size):
                yield background
                continue
            crop = crops[int(rng.integers(len(crops)))]
            k = int(rng.integers(8))
            yield np.ascontiguousarray(np.rot90(crop[:, ::-1] if k >= 4 else crop, k % 4))


def bands(size: int, rows: int) -> Iterator[np.ndarray]:
    """Full-width bands of ``rows`` rows of the same slide as :func:`tiles`."""
    bank = texture_bank()
    for y0 in range(0, size, rows):
        band = np.empty((min(rows, size - y0), size, 3), np.uint8)
        y = y0
        while y < y0 + band.shape[0]:
            dy = y % TILE
            h = min(TILE - dy, y0 + band.shape[0] - y)
            for x in range(0, size, TILE):
                band[y - y0 : y - y0 + h, x : x + TILE] = slide_tile(bank, y - dy, x, size)[dy : dy + h, : size - x]
            y += h
        yield band


def strips(size: int) -> Iterator[bytes]:
    """Deflate-compressed strips of ``STRIP_ROWS`` rows."""
    for band in bands(size, STRIP_ROWS):
        yield imagecodecs.deflate_encode(band, level=1)


def one_strip(size: int) -> Iterator[bytes]:
    """The whole slide as one deflate stream (compressed in memory, never decoded whole)."""
    deflate = zlib.compressobj(1)
    parts = [deflate.compress(band.tobytes()) for band in bands(size, TILE)]
    yield b"".join(parts) + deflate.flush()


def make_slide(path: Path, size: int, layout: str) -> None:
    """Write a generated RGB slide: ``tiled`` (512² JPEG tiles), ``stripped`` (64-row deflate
    strips) or ``onestrip`` (the whole slide in one deflate strip)."""
    common = dict(shape=(size, size, 3), dtype=np.uint8, photometric="rgb", bigtiff=True)
    if layout in ("tiled", "real"):
        source = tiles(size) if layout == "tiled" else real_tiles(size)
        tifffile.imwrite(path, source, tile=(TILE, TILE), compression="jpeg", compressionargs={"level": 90}, **common)
    elif layout == "stripped":
        tifffile.imwrite(path, strips(size), rowsperstrip=STRIP_ROWS, compression="zlib", **common)
    else:
        tifffile.imwrite(path, one_strip(size), rowsperstrip=size, compression="zlib", **common)


def plain_decode(path: Path, workers: int | None) -> dict:
    """Decode every segment of level 0 with tifffile (``workers`` threads; None: tifffile's default)."""
    start, cpu = time.perf_counter(), time.process_time()
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        threads = workers or page.maxworkers
        for _ in page.segments(maxworkers=threads, buffersize=32 * 2**20):
            pass
        height, width = page.imagelength, page.imagewidth
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"threads": threads, "seconds": seconds, "cpu_seconds": cpu, "mb_per_s": height * width * 3 / seconds / 1e6}


def io_floor(store: Path, workdir: Path) -> dict:
    """Time to write as many files of the same total size as ``store`` holds, the way convert writes its
    chunk files (:func:`wsiseg.store.chunks.write_file`: O_DIRECT where allowed), in one thread: this disk's write floor."""
    from wsiseg.store.chunks import direct_io, write_file

    files = [f for f in store.rglob("*") if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    payload = os.urandom(total // max(1, len(files)))
    folder = workdir / f"io_floor_{store.stem}"  # kept until the benchmark ends, like the stores
    folder.mkdir()
    start = time.perf_counter()
    for i in range(len(files)):
        write_file(folder / str(i), payload)
    seconds = time.perf_counter() - start
    return {"files": len(files), "store_mb": total / 1e6, "seconds": seconds, "direct_io": direct_io(workdir)}


# Peak RSS is VmHWM, the high-water mark of this process image: ru_maxrss would also count the
# parent's RSS at fork/exec time (Linux carries it over), i.e. the benchmark's own decoding.
CHILD = """
import json, re, sys, time
from pathlib import Path
from wsiseg.convert import convert_slide
import resource
start, cpu, kernel = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
convert_slide(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(seconds, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel, re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
"""


def psnr(store: Path, path: Path) -> float:
    """PSNR (dB) of the store's level 0 against tifffile's decode of the source, read in bands of 512 rows."""
    import zarr

    from wsiseg.store.slide import SlideStore

    level0, error, count = SlideStore(store).levels[0], 0.0, 0
    source = zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r")
    for y in range(0, level0.shape[1], TILE):
        a = np.asarray(level0[:, y : y + TILE]).transpose(1, 2, 0).astype(np.float32)
        b = np.asarray(source[y : y + TILE]).astype(np.float32)
        error += float(((a - b) ** 2).sum())
        count += a.size
    return float("inf") if error == 0 else 10 * np.log10(255**2 / (error / count))


def level1_psnr(store: Path, path: Path) -> dict:
    """PSNR (dB) against the exact 2x2 mean of tifffile's decode: of the store's level 1, and (JPEG-tiled
    sources) of libjpeg's DCT-scaled 1/2 decode of each tile, which tile-copy stores use as level 1 before
    encoding it (:mod:`wsiseg.store.tilecopy`)."""
    import cv2
    import zarr

    from wsiseg.store.slide import SlideStore

    level1 = SlideStore(store).levels[1]
    source = zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r")
    stored = scaled = 0.0
    count = tiles = 0
    for y in range(0, source.shape[0], 2 * TILE):
        band = np.asarray(source[y : y + 2 * TILE])
        mean = cv2.resize(band, (-(-band.shape[1] // 2), -(-band.shape[0] // 2)), interpolation=cv2.INTER_AREA).astype(
            np.float32
        )
        got = np.asarray(level1[:, y // 2 : y // 2 + TILE, : mean.shape[1]]).transpose(1, 2, 0).astype(np.float32)
        stored += float(((got - mean) ** 2).sum())
        count += mean.size
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        if page.compression == 7 and page.is_tiled and page.jpegtables is None:
            for data, index in page.parent.filehandle.read_segments(page.dataoffsets, page.databytecounts, sort=True):
                full = imagecodecs.jpeg8_decode(data)
                mean = cv2.resize(full, (full.shape[1] // 2, full.shape[0] // 2), interpolation=cv2.INTER_AREA)
                half = cv2.imdecode(
                    np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_2 | cv2.IMREAD_COLOR_RGB
                )
                scaled += float(((half.astype(np.float32) - mean) ** 2).sum())
                tiles += mean.size
    db = lambda error, n: float("inf") if error == 0 else 10 * np.log10(255**2 / (error / n))  # noqa: E731
    return {"level1_psnr_db": db(stored, count), "dct_half_psnr_db": db(scaled, tiles) if tiles else None}


def run_convert(path: Path, out: Path, size: int, options: dict) -> dict:
    """Convert in a fresh interpreter (``options``: convert_slide keywords); time it and read its peak RSS (Linux)."""
    command = [sys.executable, "-c", CHILD, str(path), str(out), json.dumps(options)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds, cpu, kernel, maxrss_kb = result.stdout.split()[-4:]
    seconds = float(seconds)
    return {
        "seconds": seconds,
        "cpu_seconds": float(cpu),
        "system_cpu_seconds": float(kernel),
        "mb_per_s": size * size * 3 / seconds / 1e6,
        "peak_rss_mb": int(maxrss_kb) / 1024,
    }


def workdir_file_system(workdir: Path) -> dict:
    """The file system the stores are written to; for ext4 whether it has a journal (``/proc/fs/jbd2``).

    Without a journal (this VM's root file system) ext4 checks each new inode against recently deleted
    ones, which made creating a store's thousands of chunk files 2-3x dearer after earlier runs'
    deletions: not what a cluster's file systems (journaled ext4, xfs, Lustre, NFS) do."""
    from wsiseg.store.chunks import mount_of

    device, point, kind = mount_of(workdir)
    journal = Path(f"/proc/fs/jbd2/{Path(device).name}-8").exists() if kind == "ext4" else None
    if journal is False:
        print(
            f"warning: {point} is ext4 without a journal: file creation there is not representative; "
            "pass --workdir on a journaled file system",
            file=sys.stderr,
        )
    return {"type": kind, "mount": point, "device": device, "ext4_journal": journal}


def settle(path: Path, drop_caches: bool) -> None:
    """Before a timed run: with ``drop_caches``, write back and drop the page cache (root only), then read the
    slide once, so every run starts with the slide cached and no earlier run's pages to reclaim.

    On this VM (virtio-balloon), memory the guest has not touched recently costs a host page fault on
    first use: as the page cache filled up with earlier runs' stores, each conversion's kernel CPU grew
    (0.8 -> 2 s at 40k², 7 rounds with a baseline in between), a cost a dedicated machine does not have."""
    if drop_caches:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass


def median_run(runs: list[dict]) -> dict:
    """The run with the median ``seconds`` (of an odd number of runs), with every run's seconds beside it."""
    ordered = sorted(runs, key=lambda run: run["seconds"])
    return {**ordered[len(ordered) // 2], "all_seconds": [round(run["seconds"], 3) for run in runs]}


def bench(
    size: int,
    layout: str,
    workdir: Path,
    options: dict,
    repeats: int,
    baseline: dict | None = None,
    drop_caches: bool = False,
) -> dict:
    """Generate one slide, measure decode and convert side by side ``repeats`` times (alternating; medians), delete the files."""
    path = workdir / f"{layout}_{size}.tif"
    start = time.perf_counter()
    make_slide(path, size, layout)
    generated = time.perf_counter() - start
    load = os.getloadavg()[0]
    decodes, converts, decodes_all, baselines = [], [], [], []
    cores = len(os.sched_getaffinity(0))
    # Every run writes a store of its own, all deleted only when the benchmark ends: ext4 scans past
    # recently deleted inodes when it creates files, so deleting thousands of chunk files just before
    # a run made its file creation several times dearer (a cohort conversion deletes nothing).
    try:
        for i in range(repeats):
            if baseline is not None:  # in the same rounds, so both see the same machine load
                settle(path, drop_caches)
                baselines.append(run_convert(path, workdir / f"{layout}_{size}_baseline{i}.zarr", size, baseline))
            settle(path, drop_caches)
            decodes.append(plain_decode(path, None))
            decodes_all.append(plain_decode(path, cores))
            store = workdir / f"{layout}_{size}_{i}.zarr"
            settle(path, drop_caches)
            converts.append(run_convert(path, store, size, options))
        floor = io_floor(store, workdir)
        quality = psnr(store, path)
        quality1 = level1_psnr(store, path)
    finally:
        path_mb = path.stat().st_size / 1e6
        path.unlink()
    decode, convert, decode_all = median_run(decodes), median_run(converts), median_run(decodes_all)
    convert["peak_rss_mb"] = max(run["peak_rss_mb"] for run in converts)
    row = {
        "layout": layout,
        "convert_options": options,
        "size": size,
        "tiff_mb": path_mb,
        "generate_seconds": generated,
        "load_average_before": load,
        "drop_caches": drop_caches,
        "repeats": repeats,
        "decode": decode,
        "decode_all_cores": decode_all,
        "convert": convert,
        "write_floor": floor,
        "store_to_tiff": floor["store_mb"] / path_mb,
        "psnr_db": quality,
        **quality1,
        "throughput_ratio": convert["mb_per_s"] / decode["mb_per_s"],
        "throughput_ratios": [c["mb_per_s"] / d["mb_per_s"] for d, c in zip(decodes, converts)],
        "throughput_ratio_all_cores": convert["mb_per_s"] / decode_all["mb_per_s"],
        "throughput_ratios_all_cores": [c["mb_per_s"] / d["mb_per_s"] for d, c in zip(decodes_all, converts)],
        # CPU seconds of the all-core decode over convert's: what the wall ratio would be on idle cores if
        # both kept them busy (a shared machine's load moves wall times, much less the CPU they take)
        "cpu_ratios_all_cores": [d["cpu_seconds"] / c["cpu_seconds"] for d, c in zip(decodes_all, converts)],
    }
    if baseline is not None:
        row["baseline"] = {
            "convert_options": baseline,
            "convert": median_run(baselines),
            "throughput_ratios_all_cores": [c["mb_per_s"] / d["mb_per_s"] for d, c in zip(decodes_all, baselines)],
            "speedups": [
                b["seconds"] / c["seconds"] for b, c in zip(baselines, converts)
            ],  # baseline time / convert time
        }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[20000, 40000], help="tiled slide sides")
    parser.add_argument("--stripped-sizes", type=int, nargs="*", default=[20000, 40000])
    parser.add_argument("--onestrip-sizes", type=int, nargs="*", default=[20000])
    parser.add_argument(
        "--real-sizes",
        type=int,
        nargs="*",
        default=[20000, 40000],
        help="tiled JPEG mosaics of real H&E crops (../shared/data/gbm40, never copied into the repo)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "convert_lossless_synthetic.json"
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--repeats", type=int, default=3, help="decode/convert pairs per slide (medians reported)")
    parser.add_argument(
        "--options", type=json.loads, default={}, help="convert_slide keywords as JSON, e.g. '{\"level\": 5}'"
    )
    parser.add_argument(
        "--baseline-options",
        type=json.loads,
        default=None,
        help="also convert with these keywords in every round (e.g. the path being replaced), for a same-load comparison",
    )
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the page cache (root) and re-read the slide before each timed run (see settle())",
    )
    args = parser.parse_args(argv)
    if args.drop_caches and not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        parser.error("--drop-caches needs write access to /proc/sys/vm/drop_caches (root)")
    rows = []
    args.workdir.mkdir(parents=True, exist_ok=True)
    file_system = workdir_file_system(args.workdir)  # warns first when it is not representative
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="wsiseg-bench-") as tmp:
        layouts = (
            ("tiled", args.sizes),
            ("real", args.real_sizes),
            ("stripped", args.stripped_sizes),
            ("onestrip", args.onestrip_sizes),
        )
        for layout, sizes in layouts:
            rows += [
                bench(size, layout, Path(tmp), args.options, args.repeats, args.baseline_options, args.drop_caches)
                for size in sizes
            ]
    result = {
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "tifffile": tifffile.__version__,
        },
        "workdir": file_system,
        "targets": {"peak_rss_mb_below": 1536, "throughput_ratio_at_least": 0.5},
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
