"""Stage ``patches``: grid patches at training resolution, filtered by mask coverage."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
import zarr
from skimage.measure import label

from wsiseg.config.params import PatchParams
from wsiseg.errors import StoreError
from wsiseg.imaging.instances import contour_target
from wsiseg.imaging.tissue import TissueMap
from wsiseg.resolution import slide_downscale
from wsiseg.store.chunks import compressor, read_padded
from wsiseg.store.slide import SlideStore
from wsiseg.utils.io import atomic_path, check_output
from wsiseg.utils.logs import progress

log = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "slide_id",
    "index",
    "row",
    "col",
    "x",
    "y",
    "level",
    "downscale",
    "size",
    "coverage",
    "tissue",
    "reason",
    "mpp",
]
REASONS = ("positive", "negative", "random")


def grid_positions(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of a patch grid along one axis; the last patch is flush with the end."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def _draw(reasons: np.ndarray, candidates: np.ndarray, count: int, reason: str, rng: np.random.Generator) -> None:
    """Mark ``count`` (at most all) of the flat cell indices ``candidates`` with ``reason``, drawn with ``rng``."""
    count = min(len(candidates), count)
    if count:
        reasons.flat[np.sort(rng.choice(candidates, size=count, replace=False))] = reason


def select_patches(
    coverage: np.ndarray, tissue: np.ndarray, params: PatchParams, rng: np.random.Generator
) -> np.ndarray:
    """Reason codes per grid cell: ``positive``, ``negative``, ``random`` or '' (dropped).

    Positives have ``min_coverage <= coverage <= max_coverage``; negatives are
    drawn at random among cells with no foreground and at least ``min_tissue``
    tissue: ``negatives`` of them, or ``negative_ratio`` per positive
    (rounded); then ``random`` more among all cells not yet kept.
    """
    reasons = np.full(coverage.shape, "", dtype=object)
    positive = (coverage >= params.min_coverage) & (coverage <= params.max_coverage) & (coverage > 0)
    reasons[positive] = "positive"
    wanted = params.negatives if params.negatives is not None else int(round(params.negative_ratio * positive.sum()))
    _draw(reasons, np.flatnonzero((coverage == 0) & (tissue >= params.min_tissue)), wanted, "negative", rng)
    _draw(reasons, np.flatnonzero(reasons == ""), params.random, "random", rng)
    return reasons


def label_classes(store: SlideStore) -> int:
    """Classes of a slide's label image from its NGFF ``image-label`` colours: 1 (binary) or max label + 1."""
    colors = store.root["labels/mask"].attrs.get("image-label", {}).get("colors", [])
    top = max((int(c["label-value"]) for c in colors), default=1)
    return 1 if top <= 1 else top + 1


def read_labels(store: SlideStore, y0: int, x0: int, size: int, downscale: float, classes: int) -> np.ndarray:
    """Label patch (size, size) uint8 of the level-0 box at (y0, x0): binary 0/1 as
    :meth:`SlideStore.read_mask`, or class indices where each pixel takes the class
    with the largest area in its footprint (``classes >= 2``)."""
    if classes == 1:
        return store.read_mask(y0, x0, (size, size), downscale)
    span = int(round(size * downscale))
    block = read_padded(store.mask_levels[0], y0, y0 + span, x0, x0 + span, 0)[0]
    if block.max() >= classes:
        raise StoreError(
            f"{store.path}: label {block.max()} found, but patches.classes is {classes} (labels 0..{classes - 1})"
        )
    if span == size:
        return block
    shares = [
        cv2.resize((block == c).astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) for c in range(classes)
    ]
    return np.argmax(np.stack(shares), axis=0).astype(np.uint8)


def read_contours(store: SlideStore, y0: int, x0: int, size: int, downscale: float, mask: np.ndarray) -> np.ndarray:
    """Contour patch (size, size) uint8 0/1 of the level-0 box at (y0, x0), the target of a contour-aware
    model (``train.contour_weight``): the edges of the slide's annotated objects where the store has their
    ids (touching objects get a contour between them), else of the connected components of ``mask``."""
    if store.instances is None:
        return contour_target(label(mask > 0, connectivity=2))
    span = int(round(size * downscale))
    height, width = store.instances.shape[-2:]
    ids = np.zeros((span, span), np.int64)
    ry0, ry1, rx0, rx1 = max(0, y0), min(height, y0 + span), max(0, x0), min(width, x0 + span)
    if ry1 > ry0 and rx1 > rx0:
        ids[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = np.asarray(store.instances[..., ry0:ry1, rx0:rx1]).reshape(
            ry1 - ry0, rx1 - rx0
        )
    pick = np.minimum((np.arange(size) * downscale + downscale / 2).astype(np.int64), span - 1)  # nearest
    return contour_target(ids[np.ix_(pick, pick)])


def class_shares(labels: np.ndarray, classes: int) -> np.ndarray:
    """Share of each label 0..max(1, classes - 1) in a label patch."""
    return np.bincount(labels.ravel(), minlength=max(2, classes))[: max(2, classes)] / labels.size


def _index_columns(classes: int) -> list[str]:
    """Index CSV columns; multi-class slides get ``coverage_{c}`` per foreground class after ``coverage``."""
    at = INDEX_COLUMNS.index("coverage") + 1
    return INDEX_COLUMNS[:at] + [f"coverage_{c}" for c in range(1, classes)] + INDEX_COLUMNS[at:]


def extract_patches(
    slide: str | Path,
    out_zarr: str | Path,
    out_csv: str | Path,
    params: PatchParams = PatchParams(),
    out_tissue: str | Path | None = None,
) -> pd.DataFrame:
    """Cut ``slide`` (a converted store with a mask) into patches and write the kept ones.

    Writes ``out_zarr`` with ``images`` (N, size, size, 3) and ``masks``
    (N, size, size) uint8 arrays (0/1, or class indices when multi-class), for binary masks ``contours``
    (the annotated objects' edges, :func:`read_contours`), and
    ``out_csv``, one row per patch in the same order, with the grid cell,
    level-0 position, pyramid level read, coverage (per class too when
    multi-class), tissue share and the reason it was kept.  ``out_tissue``
    (optional) receives the low-resolution tissue mask as a PNG.  Returns that table.

    With ``params.mpp`` the slide is read at that physical pixel size (its
    downscale is ``params.mpp`` over the slide's own pixel size; a slide
    without one is an error), else at ``params.downscale``.  The store's
    attributes and the table record the downscale and the patches' um/px
    (``mpp``; empty when the slide's pixel size is unknown).
    """
    check_output(out_zarr, "patches", (slide,), folder=True)
    check_output(out_csv, "patches", (slide, out_zarr), folder=False)
    store = SlideStore(slide)
    if not store.has_mask:
        raise StoreError(f"{slide}: patches need a ground-truth mask (training/validation slides)")
    size = params.size
    ds = slide_downscale(
        store.pixel_size, params.mpp, None if params.mpp else params.downscale, str(slide), "`patches.mpp`"
    )
    patch_mpp = round(store.pixel_size.mpp * ds, 6) if store.pixel_size.known else None
    if params.mpp and ds < 1:
        log.warning(
            "patches %s: %s is coarser than patches.mpp %g: patches are upsampled %.2fx",
            store.slide_id,
            store.pixel_size,
            params.mpp,
            1 / ds,
        )
    classes = params.classes or label_classes(store)
    stride = params.stride or max(1, size // 2)
    dh, dw = store.dims(ds)
    rows, cols = grid_positions(dh, size, stride), grid_positions(dw, size, stride)
    span = int(round(size * ds))
    tissue_map = TissueMap(store, params.tissue_saturation, method=params.tissue_method)
    if out_tissue is not None:
        tissue_map.save(out_tissue)

    shares = np.zeros((len(rows), len(cols), max(2, classes)), np.float64)
    tissue = np.zeros((len(rows), len(cols)), np.float64)
    for i, py in enumerate(rows):
        for j, px in enumerate(cols):
            y, x = int(round(py * ds)), int(round(px * ds))
            shares[i, j] = class_shares(read_labels(store, y, x, size, ds, classes), classes)
            tissue[i, j] = tissue_map.fraction(y, x, span, span)
    coverage = 1 - shares[..., 0]
    rng = np.random.default_rng([params.seed, zlib.crc32(store.slide_id.encode())])
    reasons = select_patches(coverage, tissue, params, rng)
    kept = np.argwhere(reasons != "")
    counts = {r: int((reasons == r).sum()) for r in REASONS}
    log.info(
        "patches %s: %d grid cells, %s, tissue %.1f%% of the slide",
        store.slide_id,
        reasons.size,
        counts,
        100 * tissue_map.share,
    )
    level = store.level_for(ds)
    records = []
    codec = compressor()
    with atomic_path(out_zarr, stage="patches", inputs=(slide,), folder=True) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        images = root.create_array(
            "images", shape=(len(kept), size, size, 3), chunks=(1, size, size, 3), dtype="uint8", compressors=codec
        )
        masks = root.create_array(
            "masks", shape=(len(kept), size, size), chunks=(1, size, size), dtype="uint8", compressors=codec
        )
        contours = (  # binary targets: the objects' contours too, for contour-aware training
            root.create_array(
                "contours", shape=(len(kept), size, size), chunks=(1, size, size), dtype="uint8", compressors=codec
            )
            if classes == 1
            else None
        )
        for n, (i, j) in enumerate(progress(kept, desc=f"patches {store.slide_id}", unit="patch", mininterval=5)):
            y, x = int(round(rows[i] * ds)), int(round(cols[j] * ds))
            images[n] = store.read_image(y, x, (size, size), ds)
            masks[n] = labels = read_labels(store, y, x, size, ds, classes)
            if contours is not None:
                contours[n] = read_contours(store, y, x, size, ds, labels)
            per_class = list(shares[i, j, 1:]) if classes > 1 else []
            records.append(
                (
                    store.slide_id,
                    n,
                    i,
                    j,
                    x,
                    y,
                    level,
                    ds,
                    size,
                    coverage[i, j],
                    *per_class,
                    tissue[i, j],
                    reasons[i, j],
                    patch_mpp,
                )
            )
        root.update_attributes(
            {
                "slide_id": store.slide_id,
                "size": size,
                "downscale": ds,
                "classes": classes,
                "tissue_share": tissue_map.share,
                "mpp": store.pixel_size.mpp,
                "mpp_source": store.pixel_size.source,
                "patch_mpp": patch_mpp,
            }
        )
    table = pd.DataFrame(records, columns=_index_columns(classes))
    with atomic_path(out_csv, stage="patches", inputs=(slide, out_zarr), folder=False) as tmp:
        table.to_csv(tmp, index=False, float_format="%.5f")
    return table


def extract_patches_many(
    slides: Sequence[str | Path], out_dir: str | Path, params: PatchParams = PatchParams()
) -> pd.DataFrame:
    """:func:`extract_patches` for each slide store: ``out_dir/{slide}.zarr``, ``.csv`` and ``.tissue.png`` each.

    Returns the concatenated index tables (for datasets of many small images)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    for slide in progress(slides, desc="patches", unit="slide", mininterval=10):
        stem = Path(slide).stem
        tables.append(
            extract_patches(
                slide, out_dir / f"{stem}.zarr", out_dir / f"{stem}.csv", params, out_dir / f"{stem}.tissue.png"
            )
        )
    return pd.concat(tables, ignore_index=True)
