"""Deterministic synthetic slide set: the embedded demo.

Each slide is an H&E-like RGB image (pink tissue blobs with nuclei on a white
background) with round, glomerulus-like structures (dense textured interior,
darker rim) as the foreground class.  Slides are written as tiled,
JPEG-compressed, pyramidal TIFFs (SubIFDs).  Annotations come in the formats
users have: a Kaggle-style ``train.csv`` (``id,encoding`` column-major RLE)
and HuBMAP-style GeoJSON polygons for the validation slide.  The same seed
gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile

from wsiseg import rle
from wsiseg.config.params import DemoSpec
from wsiseg.errors import ConfigError
from wsiseg.utils.io import atomic_path

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["slide_id", "image", "mask", "split"]


def _splits(n: int) -> list[str]:
    if n < 3:
        raise ConfigError(f"the demo needs at least 3 slides (train, val, test), got {n}")
    return ["train"] * (n - 2) + ["val", "test"]


def demo_samples(outdir: str | Path, slides: int) -> pd.DataFrame:
    """The demo sample sheet (``slide_id,image,mask,split``) for slides written to ``outdir``."""
    outdir = Path(outdir)
    rows = []
    for i, split in enumerate(_splits(slides)):
        slide_id = f"demo_{i}"
        mask = outdir / (f"{slide_id}.json" if split == "val" else "train.csv")
        rows.append((slide_id, str(outdir / f"{slide_id}.tiff"), str(mask), split))
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    small = rng.random((max(2, height // cell + 2), max(2, width // cell + 2)), dtype=np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def _dots(
    rng: np.random.Generator, canvas: np.ndarray, where: np.ndarray, count: int, colour, radius: tuple[int, int]
) -> None:
    ys, xs = np.nonzero(where)
    if not len(ys) or count <= 0:
        return
    pick = rng.integers(0, len(ys), size=count)
    radii = rng.integers(radius[0], radius[1] + 1, size=count)
    for y, x, r in zip(ys[pick], xs[pick], radii):
        cv2.circle(canvas, (int(x), int(y)), int(r), colour, thickness=-1)


def synthesize_slide(
    rng: np.random.Generator, spec: DemoSpec
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, int]]]:
    """Make one slide: RGB image, binary mask and the (x, y, r) circles of the glomeruli."""
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    falloff = 1.0 - (((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2) * 0.45
    tissue = (_smooth_noise(rng, h, w, max(64, min(h, w) // 4)) * falloff) > 0.38
    texture = _smooth_noise(rng, h, w, 6) - 0.5

    image = np.full((h, w, 3), 244, np.float32)
    image += (rng.random((h, w, 1), dtype=np.float32) - 0.5) * 6
    pink = np.array([232, 158, 198], np.float32)
    image[tissue] = pink + texture[tissue, None] * np.array([40, 50, 40], np.float32)

    mean_r = (spec.radius_min + spec.radius_max) / 2
    target = int(tissue.sum() / (np.pi * mean_r**2) * 0.12)
    circles: list[tuple[int, int, int]] = []
    for _ in range(target * 30):
        if len(circles) >= target:
            break
        r = int(rng.integers(spec.radius_min, spec.radius_max + 1))
        x, y = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        if not tissue[y, x] or any((x - cx) ** 2 + (y - cy) ** 2 < (r + cr + 12) ** 2 for cx, cy, cr in circles):
            continue
        circles.append((x, y, r))

    mask = np.zeros((h, w), np.uint8)
    rim = np.zeros((h, w), np.uint8)
    for x, y, r in circles:
        cv2.circle(mask, (x, y), r, 1, thickness=-1)
        cv2.circle(rim, (x, y), r, 1, thickness=max(3, r // 7))
    glom = mask.astype(bool)
    image[glom] = np.array([196, 112, 180], np.float32) + texture[glom, None] * np.array([60, 60, 50], np.float32)
    image[rim.astype(bool)] = np.array([150, 78, 138], np.float32)
    out = np.clip(image, 0, 255).astype(np.uint8)
    _dots(rng, out, tissue & ~glom, int(tissue.sum() / 900), (95, 52, 135), (2, 3))
    _dots(rng, out, glom, int(glom.sum() / 150), (80, 40, 125), (2, 4))
    return out, mask, circles


def write_pyramid_tiff(
    path: str | Path, image: np.ndarray, tile: int = 256, min_size: int = 128, mpp: float | None = None
) -> None:
    """Write ``image`` as a tiled, JPEG-compressed, pyramidal (SubIFD) TIFF, atomically; with ``mpp``
    (micrometres per pixel) every level gets its resolution tags in pixels per centimetre."""
    levels = [image]
    while min(levels[-1].shape[:2]) // 2 >= min_size:
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    options = dict(
        tile=(tile, tile), compression="jpeg", compressionargs={"level": 90}, photometric="rgb", metadata=None
    )

    def resolution(k: int) -> dict:
        return {"resolution": (1e4 / (mpp * 2**k),) * 2, "resolutionunit": "CENTIMETER"} if mpp else {}

    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, **options, **resolution(0))
        for k, level in enumerate(levels[1:], start=1):
            tif.write(level, subfiletype=1, **options, **resolution(k))


def circles_to_geojson(circles: list[tuple[int, int, int]], vertices: int = 48) -> list[dict]:
    """HuBMAP-style list of GeoJSON polygon features, one per circle."""
    features = []
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    for i, (x, y, r) in enumerate(circles):
        ring = [[round(x + r * np.cos(a), 2), round(y + r * np.sin(a), 2)] for a in angles]
        ring.append(ring[0])
        features.append(
            {
                "type": "Feature",
                "id": f"glom-{i}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"classification": {"name": "glomerulus"}, "isLocked": False},
            }
        )
    return features


def generate_demo(outdir: str | Path, spec: DemoSpec = DemoSpec()) -> pd.DataFrame:
    """Write the synthetic slide set to ``outdir`` and return its sample sheet.

    Writes ``demo_{i}.tiff`` per slide, ``train.csv`` (Kaggle RLE) for the
    train and test slides, ``demo_{i}.json`` (GeoJSON) for the val slide and
    ``samples.csv``.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    samples = demo_samples(outdir, spec.slides)
    rng = np.random.default_rng(spec.seed)
    encodings = []
    for row in samples.itertuples():
        log.info("demo: synthesising %s (%dx%d, %s)", row.slide_id, spec.height, spec.width, row.split)
        image, mask, circles = synthesize_slide(rng, spec)
        write_pyramid_tiff(row.image, image, mpp=spec.mpp)
        if row.mask.endswith(".json"):
            with atomic_path(row.mask) as tmp:
                Path(tmp).write_text(json.dumps(circles_to_geojson(circles), indent=1))
        else:
            encodings.append((row.slide_id, rle.encode(mask)))
    with atomic_path(outdir / "train.csv") as tmp:
        pd.DataFrame(encodings, columns=["id", "encoding"]).to_csv(tmp, index=False)
    with atomic_path(outdir / "samples.csv") as tmp:
        samples.to_csv(tmp, index=False)
    return samples
