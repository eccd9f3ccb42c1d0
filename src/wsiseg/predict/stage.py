"""Stage ``predict``: tiled, blended inference over a slide store, streamed to zarr.

The slide is read in tiles at the model's training resolution: a model that
records its pixel size (``mpp``, um per model pixel) reads each slide at the
downscale ``mpp / slide mpp`` (a cohort of mixed scanners needs nothing else),
else at the checkpoint's ``downscale``.  A background thread reads and decodes the next tiles
while the model computes (the GPU does not wait on I/O) and a second thread
writes finished rows.  Only uint8 tiles travel to the device; normalisation,
the model (channels_last) and the blending of overlapping tiles (Gaussian or
linear-ramp window, so there are no seams) run there.  Tile rows are processed
top to bottom; finished rows are written once, chunk-aligned, while the upper
pyramid levels are pooled from them in memory (nothing is read back): memory
holds one band of tiles, never the slide.

Output store ``{slide}.zarr``, OME-NGFF v0.4 (see :mod:`wsiseg.store.prediction`)::

    0, 1, ...              probability x 255 (uint8), axes (c, y, x): the multiscale image at
                           the root; c = 1 (foreground) for binary models, one channel per
                           class for multi-class ones, named by ``class_names``.  Level 0 is
                           the model's grid when it read the slide at a downscale above 1
                           (root attribute ``prob_downscale``, and the NGFF scale, say so),
                           else the slide's level 0
    labels/mask/0, 1, ...  image-label, axes (y, x), the slide's level 0 and 2x levels: binary
                           prob (upsampled linearly) > threshold, then post-processed, uint8
                           0/1; multi-class the arg-max class index

The root attributes ``mpp``/``mpp_source`` (the slide's level-0 pixel size)
and ``model_mpp`` say the scale; ``downscale`` the one used.  The root attribute ``provenance`` records the model (each checkpoint's
sha256, the model cards), the config hash and the wsiseg version.

Tiles without tissue are skipped (probability 0); the root attribute ``tissue``
records the detection used (``method``, ``requested``, ``share``,
``tiles_skipped``, ``tiles_total``, ``fallback``).  A slide on which detection
keeps almost no tile is predicted whole, with a warning (``tissue_fallback``).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import zarr

from wsiseg.config.params import PredictParams
from wsiseg.errors import ConfigError
from wsiseg.imaging.instances import METHODS as SPLIT_METHODS
from wsiseg.imaging.instances import min_distance_px, split_mask
from wsiseg.imaging.postprocess import postprocess_mask
from wsiseg.imaging.tissue import METHODS as TISSUE_METHODS
from wsiseg.modelcard import ModelSpec, label_names, resolve_model
from wsiseg.predict.ensemble import (
    has_contour,
    load_ensemble,
    ready_models,
    resolve_device,
    training_resolution,
    tta_pairs,
)
from wsiseg.predict.pipeline import BandWriter, blend_rows
from wsiseg.predict.plan import TilePlan
from wsiseg.resolution import (
    PixelSize,
    ResolutionError,
    slide_downscale,
    unknown_scale_message,
)
from wsiseg.store.chunks import compressor
from wsiseg.store.prediction import image_attrs, label_attrs
from wsiseg.store.pyramid import PyramidWriter, build_pyramid, level_count
from wsiseg.store.slide import SlideStore
from wsiseg.utils.io import atomic_path, check_output, release_memory
from wsiseg.utils.logs import StepTimes, progress

log = logging.getLogger(__name__)


def object_limits(params: PredictParams, pixel: PixelSize, where: str) -> tuple[int, int]:
    """(min_area, max_hole) in level-0 pixels: the ``_um2`` settings converted with the slide's pixel size, else the pixel ones."""
    limits = []
    for px, um2, key in (
        (params.min_area, params.min_area_um2, "min_area_um2"),
        (params.max_hole, params.max_hole_um2, "max_hole_um2"),
    ):
        if um2 is None:
            limits.append(int(px))
        elif not pixel.known:
            raise ResolutionError(unknown_scale_message(where, f"`predict.{key}`"))
        else:
            limits.append(int(round(um2 / pixel.mpp**2)))
    return limits[0], limits[1]


def predict_slide(
    slide: str | Path,
    checkpoints: str | Path | Sequence[str | Path] | ModelSpec,
    out: str | Path,
    params: PredictParams = PredictParams(),
    *,
    models: Sequence[torch.nn.Module] | None = None,
    class_names: Sequence[str] | None = None,
    class_name: str = "foreground",
    config_hash: str | None = None,
) -> Path:
    """Predict ``slide`` with the model(s) in ``checkpoints``; write the prediction store ``out``.

    ``checkpoints``: checkpoint files and/or model folders written by
    training (their ``model.json`` lists the checkpoints and their sha256,
    checked here).  Several checkpoints (e.g. cross-validation folds) and TTA
    views are averaged in probability space.  The mask is ``prob > threshold``,
    then objects below ``min_area`` are removed and holes below ``max_hole``
    filled.  The store is OME-NGFF (see :mod:`wsiseg.store.prediction`): probability
    channels and label values are named by ``class_names`` (index = class;
    else ``class_name`` for binary models, else the model card's); the root
    attribute ``provenance`` records each checkpoint's sha256, the model
    cards, ``config_hash`` and the wsiseg version.  ``models`` (the loaded
    ``checkpoints``) saves loading them again."""
    _check_params(params)
    spec = checkpoints if isinstance(checkpoints, ModelSpec) else resolve_model(checkpoints, key="checkpoints")
    checkpoints = spec.checkpoints
    check_output(out, "predict", (slide, *checkpoints), folder=True)
    # the checkpoints' sha256 (it takes a while on large checkpoints) is computed while the models load and the
    # tissue map is made, and checked against the model cards before any tile is predicted
    hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsiseg-sha256")
    provenance_job = hashing.submit(spec.provenance)
    hashing.shutdown(wait=False)
    store = SlideStore(slide)
    device = resolve_device(params.device)
    # given models go to the device the tiles go to (in place; on the CPU a no-op)
    models = [model.to(device) for model in models] if models else load_ensemble(checkpoints, device)
    model_mpp, model_ds = training_resolution(models[0])
    pixel = store.pixel_size
    purpose = f"the model (trained at {model_mpp:g} um/px)" if model_mpp else "the model"
    ds = slide_downscale(pixel, model_mpp, model_ds, str(slide), purpose)
    if model_mpp and not pixel.known:
        log.warning(
            "predict %s: the slide states no pixel size; reading it at the model's training downscale %g. If its pixel size "
            "differs from the training slides', set its `mpp` column in the sample sheet or `convert.default_mpp`",
            store.slide_id,
            ds,
        )
    min_area, max_hole = object_limits(params, pixel, str(slide))
    classes = int(models[0].hparams.get("classes", 1))
    contour = has_contour(models)  # a second channel: the contour probability (train.contour_weight)
    if params.split_objects == "contour" and not contour:
        raise ConfigError(
            f"`predict.split_objects` contour needs a contour-aware model (trained with `train.contour_weight` > 0): "
            f"{', '.join(map(str, checkpoints))} has none; use watershed"
        )
    channels = classes + contour
    plan = TilePlan(store, ds, params)
    log.info(
        "predict %s: %dx%d at downscale %g (slide %s, model %s), %d tiles of %d px, %d model(s) x %d TTA view(s) on %s",
        store.slide_id,
        plan.width,
        plan.height,
        ds,
        pixel,
        f"{model_mpp:g} um/px" if model_mpp else "pixel scale",
        plan.total,
        plan.tile,
        len(models),
        1 + len(params.tta),
        device,
    )
    log.info(
        "predict %s: tissue method %s%s, tissue %.1f%% of the slide, %d of %d tiles skipped (min_tissue %g)",
        store.slide_id,
        plan.tissue.method,
        " (auto)" if params.tissue_method == "auto" else "",
        100 * plan.tissue.share,
        plan.skipped,
        plan.total,
        params.min_tissue,
    )
    provenance = {**provenance_job.result(), "config_hash": config_hash}
    card_names = spec.class_names if classes > 1 or class_name == "foreground" else None  # a given class_name wins
    names = label_names(classes, class_names or card_names, class_name)
    # fast: outputs are written while the model computes.  No shuffle: on uint8 probabilities and masks
    # bit-shuffling made lz4 slower (encode and decode) for no smaller files (benchmarks/journal/predict.md)
    codec = compressor("lz4", 5, "none")
    levels = level_count(store.height, store.width, params.chunk)
    clean = (
        bool(min_area or max_hole or params.split_objects) and classes == 1
    )  # post-processing: mask pyramid afterwards
    size = (store.height, store.width)
    model_grid = ds > 1  # probabilities stored on the model's grid (a finer model's are stored at level 0)
    prob_size, prob_scale = ((plan.height, plan.width), ds) if model_grid else (size, 1.0)
    prob_levels = level_count(*prob_size, params.chunk)
    with atomic_path(out, stage="predict", inputs=(slide, *checkpoints), folder=True) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        labels = root.create_group("labels")
        mask_group = labels.create_group("mask")
        strips = plan.strips()
        mask_levels = 1 if clean else levels
        if len(strips) > 1:  # levels whose strip borders are chunk corners are written by strip, the rest built after
            prob_direct = min(prob_levels, _aligned_levels(strips[0][1], params.chunk))
            mask_direct = min(mask_levels, _aligned_levels(int(strips[0][1] * ds), params.chunk))
        else:
            prob_direct, mask_direct = prob_levels, mask_levels
        bar = progress(
            total=len(plan.ys) * len(strips), desc=f"predict {store.slide_id}", unit="tile row", mininterval=5
        )
        ready = ready_models(models, device, plan.tile)  # once for every strip
        times, start = StepTimes(), time.perf_counter()
        for i, (b0, b1) in enumerate(strips):
            columns = (b0 - max(0, b0 - 1), b0, b1)
            level0 = int(round(b0 * ds))  # the strip's first level-0 column
            with (
                PyramidWriter(
                    root,
                    (channels, *prob_size),
                    prob_direct,
                    params.chunk,
                    codec,
                    "mean",
                    workers=1,
                    x0=b0 if model_grid else level0,
                    create=i == 0,
                ) as prob,
                PyramidWriter(
                    mask_group, size, mask_direct, params.chunk, codec, "max", workers=1, x0=level0, create=i == 0
                ) as mask,
            ):
                writer = BandWriter(prob, mask, size, ds, params.threshold, model_grid, columns, binary=classes == 1)
                blend_rows(plan, (b0, b1), ready, device, writer, channels, bar, times)
            release_memory()  # what the strip's buffers held goes back to the system: peak memory stays one strip's
        bar.close()
        tiles_s = time.perf_counter() - start
        log.info(
            "predict %s: tiles predicted in %.2f s; %s",
            store.slide_id,
            tiles_s,
            times.summary(),
            extra={"step_seconds": {"tiles": tiles_s, **times.seconds}},
        )
        if prob_direct < prob_levels:
            build_pyramid(root, prob_levels, params.chunk, codec, "mean", start=prob_direct)
        if not clean and mask_direct < levels:
            build_pyramid(mask_group, levels, params.chunk, codec, "max", start=mask_direct)
        if clean:
            # holes are filled before a split and small objects removed after it, so the small pieces a
            # split carves go too (GlaS: benchmarks/journal/tables.md)
            after = min_area if params.split_objects else 0
            if (min_area - after) or max_hole:
                postprocess_mask(mask_group["0"], min_area - after, max_hole)
            if params.split_objects:
                split_mask(
                    mask_group["0"],
                    min_distance_px(params.split_min_distance_um, pixel.mpp, params.split_min_distance_px),
                    contour=contour_rows(root["0"], prob_scale, store.width)
                    if params.split_objects == "contour"
                    else None,
                    contour_threshold=params.contour_threshold,
                )
                if after:
                    postprocess_mask(mask_group["0"], after, 0)
            build_pyramid(mask_group, levels, params.chunk, codec, "max")
        labels.attrs["labels"] = ["mask"]
        mask_group.update_attributes(label_attrs(levels, names, pixel.mpp))
        root.update_attributes(
            {
                **image_attrs(
                    f"{store.slide_id} probability",
                    prob_levels,
                    (names[1:] + ["contour"] * contour) if classes == 1 else names,
                    pixel.mpp,
                    prob_scale,
                    binary=classes == 1,
                ),
                "prob_downscale": prob_scale,
                "slide_id": store.slide_id,
                "class_names": names,
                "provenance": provenance,
                "checkpoints": [str(c) for c in checkpoints],
                "downscale": ds,
                **pixel.as_dict(),
                "model_mpp": model_mpp,
                "min_area": min_area,
                "max_hole": max_hole,
                "tile": plan.tile,
                "overlap": params.overlap,
                "threshold": params.threshold,
                "tta": list(params.tta),
                "classes": classes,
                "contour_channel": 1 if contour else None,
                "tiles_skipped": plan.skipped,
                "tiles_total": plan.total,
                "tissue": plan.info(),
            }
        )
    log.info(
        "predict %s: done, %d of %d tiles skipped as non-tissue (tissue method %s%s)",
        store.slide_id,
        plan.skipped,
        plan.total,
        plan.tissue.method,
        ", fallback: every tile predicted" if plan.fallback else "",
    )
    return Path(out)


def contour_rows(prob: zarr.Array, scale: float, width: int) -> Callable[[int, int], np.ndarray]:
    """``read(top, bottom)``: the contour probability (channel 1 of the uint8 probability array ``prob``, on a
    grid ``scale`` level-0 pixels per pixel) of level-0 rows [top, bottom), ``width`` columns, 0..1."""

    def read(top: int, bottom: int) -> np.ndarray:
        r0 = max(0, int(top // scale))
        r1 = min(prob.shape[1], int(math.ceil(bottom / scale)) + 1)
        rows = np.asarray(prob[1, r0:r1, :], np.float32) / 255
        height = max(1, int(round((r1 - r0) * scale)))
        up = rows if scale == 1 else cv2.resize(rows, (width, height), interpolation=cv2.INTER_LINEAR)
        up = up[:, :width]
        part = up[top - int(round(r0 * scale)) :][: bottom - top]
        if len(part) < bottom - top:  # the last rows past the grid's edge: the edge row repeated
            part = np.concatenate([part, np.repeat(part[-1:], bottom - top - len(part), axis=0)])
        return part

    return read


def _aligned_levels(strip: int, chunk: int) -> int:
    """Number of 2x pyramid levels at which a ``strip``-column-wide strip is a whole number of chunks."""
    k = 0
    while strip % (chunk * 2**k) == 0:
        k += 1
    return k


def _check_params(params: PredictParams) -> None:
    if params.overlap >= params.tile:
        raise ConfigError(f"predict.overlap ({params.overlap}) must be smaller than predict.tile ({params.tile})")
    tta_pairs(params.tta)
    if params.split_objects not in (None, *SPLIT_METHODS):
        raise ConfigError(
            f"predict.split_objects {params.split_objects!r} is unknown; choose from {list(SPLIT_METHODS)} or null"
        )
    if params.tissue_method not in TISSUE_METHODS:
        raise ConfigError(
            f"predict.tissue_method {params.tissue_method!r} is unknown; choose from {list(TISSUE_METHODS)}"
        )


def predict_many(
    slides: Sequence[str | Path],
    checkpoints: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    params: PredictParams = PredictParams(),
    class_names: Sequence[str] | None = None,
    class_name: str = "foreground",
    config_hash: str | None = None,
) -> list[Path]:
    """:func:`predict_slide` for each slide store, models loaded once: ``out_dir/{slide store name}`` each.

    For datasets of many small images (one Snakemake job per group of slides)."""
    _check_params(params)
    spec = resolve_model(checkpoints, key="checkpoints")
    models = load_ensemble(spec.checkpoints, resolve_device(params.device))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        predict_slide(
            slide,
            spec,
            out_dir / Path(slide).name,
            params,
            models=models,
            class_names=class_names,
            class_name=class_name,
            config_hash=config_hash,
        )
        for slide in progress(slides, desc="predict", unit="slide", mininterval=10)
    ]
