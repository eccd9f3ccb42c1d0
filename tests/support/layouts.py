"""Tiny datasets in the download layouts of the field (HuBMAP-HPA, DSB2018, MoNuSeg, colour maps).

Each ``make_*`` writes real images and annotations below ``root`` and
returns the ground truth the tests check against.  Images are small
(a few hundred pixels) so a whole workflow runs in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import tifffile
from skimage.draw import ellipse

from wsiseg import rle


def nuclei(rng: np.random.Generator, height: int, width: int, count: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A fluorescence-like RGB image with ``count`` bright nuclei on a dark background, and one boolean mask per nucleus.

    Nuclei may touch but do not overlap (a later one is drawn only on free pixels)."""
    image = rng.integers(5, 30, size=(height, width, 3), dtype=np.uint8)
    taken = np.zeros((height, width), bool)
    masks = []
    while len(masks) < count:
        r, c = rng.integers(8, height - 8), rng.integers(8, width - 8)
        rr, cc = ellipse(
            r, c, rng.integers(5, 9), rng.integers(5, 9), shape=(height, width), rotation=rng.uniform(0, np.pi)
        )
        if taken[rr, cc].any():
            continue
        mask = np.zeros((height, width), bool)
        mask[rr, cc] = True
        taken |= mask
        image[mask] = rng.integers(150, 230, size=(int(mask.sum()), 3), dtype=np.uint8)
        masks.append(mask)
    return image, masks


def make_dsb2018(root: Path, train: int = 8, test: int = 2, seed: int = 0) -> dict[str, int]:
    """``stage1_train/{id}/images/{id}.png`` (RGBA, like DSB) + ``masks/*.png`` (0/255, one per nucleus); ``stage1_test``.

    Returns the nucleus count per training image id."""
    rng = np.random.default_rng(seed)
    counts = {}
    for n in range(train + test):
        image_id = f"{n:04x}{'ab' * 6}"
        folder = root / ("stage1_train" if n < train else "stage1_test") / image_id
        (folder / "images").mkdir(parents=True)
        height, width = (96, 128) if n % 2 else (128, 96)
        image, masks = nuclei(rng, height, width, int(rng.integers(4, 8)))
        rgba = np.dstack([image, np.full((height, width), 255, np.uint8)])
        cv2.imwrite(str(folder / "images" / f"{image_id}.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
        if n < train:
            (folder / "masks").mkdir()
            for k, mask in enumerate(masks):
                cv2.imwrite(str(folder / "masks" / f"m{k:03d}.png"), mask.astype(np.uint8) * 255)
            counts[image_id] = len(masks)
    return counts


def make_hpa(
    root: Path, organs: tuple[str, ...] = ("kidney", "lung", "spleen", "kidney", "lung"), seed: int = 0
) -> dict[str, np.ndarray]:
    """``train.csv`` (HPA 2022 columns, column-major ``rle``) + ``train_images/{id}.tiff``; returns the masks by id."""
    rng = np.random.default_rng(seed)
    (root / "train_images").mkdir(parents=True)
    rows, truth = [], {}
    for n, organ in enumerate(organs):
        image_id = str(1000 + 37 * n)
        height, width = 160, 192
        image, masks = nuclei(rng, height, width, 5)
        mask = np.any(masks, axis=0)
        tifffile.imwrite(root / "train_images" / f"{image_id}.tiff", image, photometric="rgb")
        rows.append([image_id, organ, "HPA", height, width, 0.4, 4, rle.encode(mask), 50, "Female"])
        truth[image_id] = mask
    columns = [
        "id",
        "organ",
        "data_source",
        "img_height",
        "img_width",
        "pixel_size",
        "tissue_thickness",
        "rle",
        "age",
        "sex",
    ]
    pd.DataFrame(rows, columns=columns).to_csv(root / "train.csv", index=False)
    return truth


def aperio_xml(polygons: list[np.ndarray]) -> str:
    """An Aperio ImageScope annotation document with one Region per (n, 2) array of x, y vertices."""
    regions = "".join(
        f'<Region Id="{i}" Type="0"><Attributes/><Vertices>'
        + "".join(f'<Vertex X="{x:.2f}" Y="{y:.2f}" Z="0"/>' for x, y in polygon)
        + "</Vertices></Region>"
        for i, polygon in enumerate(polygons, start=1)
    )
    return (
        '<?xml version="1.0"?><Annotations MicronsPerPixel="0.252000"><Annotation Id="1" LineColor="65280">'
        f"<Regions><RegionAttributeHeaders/>{regions}</Regions></Annotation></Annotations>"
    )


def make_monuseg(root: Path, train: int = 4, test: int = 1, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """MoNuSeg 2018: ``MoNuSeg 2018 Training Data/{Tissue Images,Annotations}/`` and ``MoNuSegTestData/`` (tif + xml side by side).

    Nuclei are octagons; returns their vertex arrays by image id."""
    rng = np.random.default_rng(seed)
    folders = (
        root / "MoNuSeg 2018 Training Data" / "Tissue Images",
        root / "MoNuSeg 2018 Training Data" / "Annotations",
        root / "MoNuSegTestData",
    )
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    angles = np.linspace(0, 2 * np.pi, 9)[:-1]
    for n in range(train + test):
        image_id = f"TCGA-{n:02d}-A1B2-01Z-00-DX1"
        centres = [(20 + 30 * (k % 5), 20 + 30 * (k // 5)) for k in range(10)]
        polygons = [np.stack([cx + 9 * np.cos(angles), cy + 9 * np.sin(angles)], axis=1) for cx, cy in centres]
        image = rng.integers(200, 240, size=(96, 160, 3), dtype=np.uint8)
        for polygon in polygons:
            cv2.fillPoly(image, [polygon.round().astype(np.int32)], (90, 40, 120))
        image_dir, xml_dir = (folders[0], folders[1]) if n < train else (folders[2], folders[2])
        tifffile.imwrite(image_dir / f"{image_id}.tif", image, photometric="rgb")
        (xml_dir / f"{image_id}.xml").write_text(aperio_xml(polygons))
        truth[image_id] = polygons
    return truth


PALETTE = {"#ff0000": 1, "#00ff00": 2}  # tumour discs, stroma bars
CLASS_COLOURS = {1: (255, 0, 0), 2: (0, 255, 0)}


def make_colormap(root: Path, count: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """``images/{id}.png`` + ``masks/{id}.png`` colour-coded with :data:`PALETTE`; returns the class maps by id."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    truth = {}
    for n in range(count):
        image_id = f"tile_{n:02d}"
        height, width = 128, 160
        classes = np.zeros((height, width), np.uint8)
        for _ in range(3):
            x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 20))
            classes[y : y + 14, x : x + 40] = 2
        for _ in range(4):
            cv2.circle(classes, (int(rng.integers(15, width - 15)), int(rng.integers(15, height - 15))), 11, 1, -1)
        image = rng.integers(225, 250, size=(height, width, 3), dtype=np.uint8)
        image[classes == 1] = (110, 30, 140)
        image[classes == 2] = (230, 120, 170)
        mask = np.zeros((height, width, 3), np.uint8)
        for c, colour in CLASS_COLOURS.items():
            mask[classes == c] = colour
        cv2.imwrite(str(root / "images" / f"{image_id}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{image_id}.png"), cv2.cvtColor(mask, cv2.COLOR_RGB2BGR))
        truth[image_id] = classes
    return truth


def make_kidney(root: Path, seed: int = 0) -> None:
    """HuBMAP kidney 2021: ``train/{id}.tiff`` with ``train.csv`` (``id,encoding``) or ``{id}.json``, ``test/``, sample submission."""
    rng = np.random.default_rng(seed)
    for folder in ("train", "test"):
        (root / folder).mkdir(parents=True)
    encodings = []
    for n, slide_id in enumerate(("2f6ecfcdf", "aaa6a05cc", "cb2d976f4", "0486052bb")):
        image, masks = nuclei(rng, 192, 256, 4)
        folder = "test" if n == 3 else "train"
        tifffile.imwrite(root / folder / f"{slide_id}.tiff", image, photometric="rgb", tile=(64, 64))
        if n < 2:
            encodings.append([slide_id, rle.encode(np.any(masks, axis=0))])
        elif n == 2:
            ys, xs = np.nonzero(masks[0])
            ring = [
                [int(xs.min()), int(ys.min())],
                [int(xs.max()), int(ys.min())],
                [int(xs.max()), int(ys.max())],
                [int(xs.min()), int(ys.max())],
            ]
            feature = {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]},
                "properties": {},
            }
            (root / folder / f"{slide_id}.json").write_text(json.dumps([feature]))
    pd.DataFrame(encodings, columns=["id", "encoding"]).to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": ["0486052bb"], "predicted": [""]}).to_csv(root / "sample_submission.csv", index=False)
