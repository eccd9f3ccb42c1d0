"""Stage ``convert``: source slide (+ annotation) → OME-NGFF multiscale zarr store."""

from __future__ import annotations

import logging
import time
from contextlib import closing, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

import numpy as np
import zarr

from wsiseg.annotations.base import MaskSource
from wsiseg.annotations.masks import open_mask
from wsiseg.config.params import ConvertParams, with_options
from wsiseg.errors import MaskError
from wsiseg.readers.base import default_workers
from wsiseg.readers.registry import describe
from wsiseg.readers.slide import SourceSlide
from wsiseg.resolution import choose
from wsiseg.store.chunks import LOSSY, chunk_writers, compressor, create_level, write_block, write_grid
from wsiseg.store.ngff import LABEL_AXES, NGFF_VERSION, multiscales
from wsiseg.store.pyramid import (
    BlockPyramid,
    PyramidWriter,
    build_pyramid,
    chunk_grid,
    halve_grid,
    level_count,
    write_levels,
)
from wsiseg.store.tilecopy import TileCopy, copy_plan, write_copied
from wsiseg.utils.io import atomic_path, check_output
from wsiseg.utils.logs import StepTimes, progress
from wsiseg.utils.prefetch import prefetch

log = logging.getLogger(__name__)

OMERO_CHANNELS = [
    {"label": name, "color": color, "active": True, "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
    for name, color in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
]

INSTANCE_MAX_SIDE = 8192  # the object metrics' level-0 limit (wsiseg.report.object_scores)


def write_image(
    root: zarr.Group,
    source: SourceSlide,
    levels: int,
    chunk: int,
    codec,
    *,
    slide_id: str,
    workers: int,
    tile_copy: bool = False,
    times: StepTimes | None = None,
) -> dict:
    """Write the image pyramid: by square blocks for tiled TIFFs, else by full-width bands; return how level 0 was made
    (``{"path": "tile-copy" | "decode", "why": ...}``).  ``times`` gets the main thread's time per step.

    With ``tile_copy`` and a JPEG store, a tiled JPEG TIFF whose tiles are the chunks has its tiles copied as
    level 0 (:mod:`wsiseg.store.tilecopy`); any other slide (the log says why) is decoded and re-encoded."""
    if tile_copy and codec.codec_id == "wsiseg_jpeg":
        plan = copy_plan(source, chunk, codec)
        if isinstance(plan, TileCopy):
            log.info(
                "convert %s: level 0 = the TIFF's own JPEG tiles, copied (bit-identical to the source decode, not re-encoded); "
                "level 1 from their DCT-scaled 1/2 decode, levels 1.. JPEG quality %d",
                slide_id,
                codec.level,
            )
            write_copied(root, source, plan, levels, chunk, codec, slide_id, workers, times=times)
            return {"path": "tile-copy", "why": "tiled JPEG TIFF, tiles the size of the chunks"}
        log.info(
            "convert %s: JPEG tiles not copied, %s: decoding and re-encoding level 0 (JPEG quality %d)",
            slide_id,
            plan,
            codec.level,
        )
        why = f"tiles not copied: {plan}"
    else:
        why = "tile copy off" if codec.codec_id == "wsiseg_jpeg" else "lossless store"
    if source.tiled:
        write_blocks(root, source, levels, chunk, codec, slide_id, workers, times=times)
    else:
        write_bands(root, source, levels, chunk, codec, slide_id, workers, times=times)
    return {"path": "decode", "why": why}


def write_blocks(
    root: zarr.Group,
    source: SourceSlide,
    levels: int,
    chunk: int,
    codec,
    slide_id: str,
    workers: int,
    inner: int = 3,
    times: StepTimes | None = None,
) -> None:
    """Convert a tiled slide by square blocks of ``chunk * 2**inner`` pixels: memory independent of slide size.

    Each block (read by decoding just its tiles) gives whole chunks of
    levels 0..``inner``, downsampled within the block; the levels above are
    pooled from each block's level ``inner`` in memory (:class:`wsiseg.store.pyramid.BlockPyramid`,
    none read back).  Blocks grow to cover a tile when the file's tiles are larger than 4096 px.
    """
    height, width = source.shape
    while chunk << inner < source.tile_side:  # blocks at least as large as the tiles: each decoded once or twice
        inner += 1
    inner = min(inner, levels - 1)
    side = chunk << inner
    arrays, (h, w) = [], (height, width)
    for k in range(inner + 1):
        arrays.append(create_level(root, str(k), (3, h, w), chunk, codec))
        h, w = (h + 1) // 2, (w + 1) // 2
    corners = [
        (y, x, min(height, y + side), min(width, x + side))
        for y in range(0, height, side)
        for x in range(0, width, side)
    ]
    blocks = prefetch(
        (y, x, chunk_grid(source.read_pieces(y, y1, x, x1), y, y1, x, x1, chunk)) for y, x, y1, x1 in corners
    )
    above = None  # levels inner+1.. built from the blocks' level inner, in memory
    if levels > inner + 1:  # (then inner >= 3)
        above = BlockPyramid(
            root, arrays[inner].shape, levels - inner - 1, chunk, codec, "mean", workers, first=inner + 1
        )
    times = times or StepTimes()
    with closing(blocks), chunk_writers(workers) as executor, above or nullcontext():
        waiting = times.waiting("waiting for decoded tiles", blocks)
        for y, x, grid in progress(
            waiting, total=len(corners), desc=f"convert {slide_id}", unit="block", mininterval=10
        ):
            # pooling runs while the chunks are encoded and written; tiles the size of a chunk as they are
            with times.step("pooling"):
                pending = write_grid(arrays[0], y, x, grid, executor, wait=False)
                if inner:
                    pending += write_levels(arrays, 1, y, x, halve_grid(grid, "mean"), executor, above)
            with times.step("waiting for the writer threads (chunks encoded)"):
                for job in pending:
                    job.result()


def write_bands(
    root: zarr.Group,
    source: SourceSlide,
    levels: int,
    chunk: int,
    codec,
    slide_id: str,
    workers: int,
    times: StepTimes | None = None,
) -> None:
    """Stream level 0 in chunk-high full-width bands and build the mean pyramid on the fly."""
    height, width = source.shape
    times = times or StepTimes()
    bands = prefetch(band for _, band in source.bands(chunk))
    with (
        closing(bands),
        PyramidWriter(root, (3, height, width), levels, chunk, codec, "mean", workers=workers) as pyramid,
    ):
        waiting = times.waiting("waiting for decoded bands", bands)
        for band in progress(
            waiting, total=-(-height // chunk), desc=f"convert {slide_id}", unit="band", mininterval=10
        ):
            with times.step("pooling, waiting for the writer threads"):
                pyramid.add(band)


def write_labels(
    root: zarr.Group, annotation: MaskSource, levels: int, chunk: int, codec, workers: int, mpp: float | None = None
) -> float:
    """Rasterise ``annotation`` into the NGFF label image ``labels/mask``; return the foreground share.

    Sources that know their objects also get ``labels/instances`` (uint32
    object ids, level 0 only) on slides up to :data:`INSTANCE_MAX_SIDE` px,
    where the object metrics work at level 0.  ``mpp``: level 0's pixel size for the NGFF scales."""
    height, width = annotation.shape
    labels = root.create_group("labels")
    small = max(height, width) <= INSTANCE_MAX_SIDE
    names = ["mask", "instances"] if small and hasattr(annotation, "instance_blocks") else ["mask"]
    labels.attrs["labels"] = names
    group = labels.create_group("mask")
    label0 = create_level(group, "0", (height, width), chunk, codec)  # (y, x): a 2-D labels layer in napari
    foreground = 0
    with chunk_writers(workers) as executor:
        for y0, x0, block in annotation.blocks(chunk):
            write_block(label0, y0, x0, block[:, :, None], executor)
            foreground += int(np.count_nonzero(block))
        if "instances" in names:
            objects = labels.create_group("instances")
            ids = create_level(objects, "0", (height, width), chunk, codec, dtype="uint32")
            for y0, x0, block in annotation.instance_blocks(chunk):
                write_block(ids, y0, x0, block[:, :, None], executor)
            objects.update_attributes(
                {
                    "multiscales": multiscales("instances", 1, "max", LABEL_AXES, mpp),
                    "image-label": {"version": NGFF_VERSION, "source": {"image": "../../"}},
                }
            )
    build_pyramid(group, levels, chunk, codec, "max", workers=workers)
    colors = [{"label-value": value, "rgba": [*rgb, 160]} for value, rgb in sorted(annotation.classes.items())]
    group.update_attributes(
        {
            "multiscales": multiscales("mask", levels, "max", LABEL_AXES, mpp),
            "image-label": {"version": NGFF_VERSION, "colors": colors, "source": {"image": "../../"}},
        }
    )
    return foreground / (height * width)


def check_foreground(mask: str | Path, slide_id: str, found: str, allow_empty_mask: bool) -> None:
    """Refuse the empty annotation ``mask`` of a train/val slide (:class:`MaskError` saying what it holds: ``found``),
    or only log a warning when ``allow_empty_mask``."""
    message = f"{mask}: the annotation of train/val slide '{slide_id}' is empty ({found})"
    if allow_empty_mask:
        log.warning("%s; converted as an all-background slide (convert.allow_empty_mask: true)", message)
        return
    raise MaskError(
        f"{message}; a training slide without foreground usually means a wrong file, slide id or coordinate frame. "
        "Set `convert.allow_empty_mask: true` if the slide truly has none"
    )


@contextmanager
def open_inputs(
    image: str | Path,
    mask: str | Path | None,
    slide_id: str,
    params: ConvertParams = ConvertParams(),
    *,
    require_foreground: bool = False,
) -> Iterator[tuple[SourceSlide, MaskSource | None]]:
    """The opened image and its annotation (None without ``mask``), validated against each other; closed on exit.

    Raises on bad input before anything is written (see :func:`convert_slide` for the options), including
    an annotation known to be empty without rasterising it (RLE, polygons) when ``require_foreground``."""
    with SourceSlide(
        image,
        uint16=params.uint16,
        percentiles=params.percentiles,
        channels=params.channels,
        workers=params.workers,
        max_decoded_pixels=params.max_decoded_pixels,
        reader=params.reader,
    ) as source:
        annotation = (
            open_mask(
                mask,
                slide_id,
                source.shape,
                palette=params.palette,
                threshold=params.mask_threshold,
                max_decoded_pixels=params.max_decoded_pixels,
            )
            if mask
            else None
        )
        try:
            if annotation is not None and require_foreground and annotation.empty:
                check_foreground(mask, slide_id, annotation.found, params.allow_empty_mask)
            yield source, annotation
        finally:
            close = getattr(annotation, "close", None)  # mask images hold an open file
            if close is not None:
                close()


def convert_slide(
    image: str | Path,
    out: str | Path,
    mask: str | Path | None = None,
    *,
    slide_id: str | None = None,
    params: ConvertParams | None = None,
    mpp: float | None = None,
    require_foreground: bool = False,
    **options: Any,
) -> Path:
    """Convert ``image`` (and its ``mask`` annotation, if any) to an OME-NGFF zarr at ``out``.

    ``params`` (:class:`~wsiseg.config.params.ConvertParams`, config ``convert``) says how; ``options`` are
    single fields of it given as keywords (``chunk=256``), applied over ``params``.  The fields below are
    ``params``' fields.

    A tiled image is converted by square blocks (:func:`write_blocks`: memory
    independent of the slide's size), other layouts are streamed in
    full-width bands of ``chunk`` rows (memory grows with the width only);
    tiles or strips are decoded once each (``workers`` threads) and every
    pyramid level is written chunk-aligned on the fly.  Chunks
    are ``chunk``² and Blosc-``compression``ed at ``level`` with ``shuffle``
    (bit, byte or none); ``compression="jpeg"`` stores the image pyramid as
    JPEG of quality ``jpeg_quality`` instead (lossy, several times smaller;
    the label image stays lossless, Blosc-lz4).  In that mode a tiled JPEG TIFF whose tiles are
    ``chunk``² has its tiles copied as level 0 (bit-identical to the source decode, no re-encoding;
    level 1 from their DCT-scaled 1/2 decode, see :mod:`wsiseg.store.tilecopy`) unless ``jpeg_tile_copy``
    is False; the log and the ``wsiseg.level0`` attribute say which path a slide took.  ``uint16`` (``scale`` or ``percentile``
    with ``percentiles``) maps non-8-bit pixels to uint8; ``channels`` picks
    three channels of a multi-channel image.  The annotation (RLE table row, GeoJSON or
    Aperio XML polygons, mask image or folder of per-object mask images; RGB masks mapped
    to class indices by ``palette``, other mask images foreground above ``mask_threshold``) is
    validated against the image and written first, as the label image
    ``labels/mask`` (0/1, or class indices with a palette), so a bad mask
    fails before the image work.  The store appears at ``out`` only once it
    is complete.

    ``require_foreground`` (train/val slides): an annotation without any
    foreground is a :class:`MaskError` naming the file and what it holds,
    raised before the image is converted (when reading the file tells:
    RLE, polygons, mask folders; else right after rasterising it), or a
    warning with ``allow_empty_mask``.  PNG/JPEG images and masks (decoded
    whole) whose header declares more than ``max_decoded_pixels`` pixels
    are refused before decoding.  NaN/infinite float pixels become 0 and
    are counted in a warning.  ``reader`` picks the library that reads the
    slide: ``tifffile``, ``openslide``, ``dicom`` or ``auto`` (per file, see
    :mod:`wsiseg.readers.registry`).

    The pixel size (micrometres per pixel) is ``mpp`` (the sample sheet's
    column) when given, else what the slide's metadata states, else
    ``default_mpp``; it goes into the NGFF scales and the ``wsiseg``
    attributes (``mpp``, ``mpp_source``; None/"unknown" when nothing says).
    """
    params = with_options(params or ConvertParams(), options)
    chunk, compression, workers = params.chunk, params.compression, params.workers or default_workers()
    out = Path(out)
    check_output(out, "convert", (image, mask), folder=True)
    slide_id = slide_id or Path(image).stem
    with open_inputs(image, mask, slide_id, params, require_foreground=require_foreground) as (source, annotation):
        height, width = source.shape
        codec = compressor(compression, params.jpeg_quality if compression in LOSSY else params.level, params.shuffle)
        label_codec = compressor("lz4", 5, "bit") if compression in LOSSY else codec
        levels = level_count(height, width, chunk)
        pixel = choose(source.pixel_size, mpp, params.default_mpp)
        log.info(
            "convert %s: %dx%d px %s, pixel size %s, %d levels, chunk %d -> %s",
            slide_id,
            width,
            height,
            source.dtype,
            pixel,
            levels,
            chunk,
            out,
        )
        found = describe(source.reader)
        log.info(
            "convert %s: read by %s (%s), levels %s, associated images %s",
            slide_id,
            found["backend"],
            found["vendor"],
            found["levels"],
            found["associated"] or "none",
        )
        with atomic_path(out, stage="convert", inputs=(image, mask), folder=True) as tmp:
            root = zarr.open_group(tmp, mode="w", zarr_format=2)
            if annotation is not None:
                share = write_labels(root, annotation, levels, chunk, label_codec, workers, pixel.mpp)
                log.info("convert %s: mask from %s, %.2f%% labelled", slide_id, mask, 100 * share)
                if (
                    share == 0 and require_foreground and not annotation.empty
                ):  # (known-empty ones were checked on opening)
                    check_foreground(
                        mask,
                        slide_id,
                        f"{annotation.found}: 0 foreground pixels once rasterised",
                        params.allow_empty_mask,
                    )
            times, start = StepTimes(), time.perf_counter()
            made = write_image(
                root,
                source,
                levels,
                chunk,
                codec,
                slide_id=slide_id,
                workers=workers,
                tile_copy=params.jpeg_tile_copy,
                times=times,
            )
            seconds = time.perf_counter() - start
            log.info(
                "convert %s: image written in %.2f s (%.0f MB/s of level 0, %s); main thread: %s",
                slide_id,
                seconds,
                height * width * 3 / max(seconds, 1e-9) / 1e6,
                made["path"],
                times.summary() or "-",
                extra={"step_seconds": {"image": seconds, **times.seconds}},
            )
            if source.intensity.nonfinite:
                log.warning(
                    "%s: %d pixel(s) with NaN or infinite values mapped to 0 (intensity %r)",
                    image,
                    source.intensity.nonfinite,
                    source.intensity,
                )
            root.update_attributes(
                {
                    "multiscales": multiscales(slide_id, levels, "mean", mpp=pixel.mpp),
                    "omero": {"version": NGFF_VERSION, "name": slide_id, "channels": OMERO_CHANNELS},
                    "wsiseg": {
                        "slide_id": slide_id,
                        "source": str(image),
                        "mask": str(mask) if mask else None,
                        "intensity": repr(source.intensity),
                        "reader": found,  # backend, vendor, levels, associated images
                        "classes": sorted(annotation.classes) if annotation is not None else None,
                        "level0": made,  # path: tile-copy (JPEG tiles copied) or decode; why
                        **pixel.as_dict(),
                    },
                }
            )
    return out


def convert_many(
    items: Sequence[Sequence],
    out_dir: str | Path,
    foreground_slides: Collection[str] = (),
    params: ConvertParams | None = None,
    **options: Any,
) -> list[Path]:
    """Convert ``(slide_id, image, mask[, mpp])`` items to ``out_dir/{slide_id}.zarr`` with :func:`convert_slide`
    (``params``, with ``options`` as single fields over it; ``mpp``: the sample sheet's pixel size, None or absent
    = the image's metadata or ``default_mpp``).

    Every image and mask is opened and checked first, so a bad file stops
    the group before any conversion; for datasets of many small images.
    The slides in ``foreground_slides`` (train/val) get ``require_foreground``."""
    params = with_options(params or ConvertParams(), options)
    needs = set(foreground_slides)
    for slide_id, image, mask, *_ in items:
        with open_inputs(image, mask or None, slide_id, params, require_foreground=slide_id in needs):
            pass
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        convert_slide(
            image,
            out_dir / f"{slide_id}.zarr",
            mask=mask or None,
            slide_id=slide_id,
            params=params,
            require_foreground=slide_id in needs,
            mpp=mpp[0] if mpp else None,
        )
        for slide_id, image, mask, *mpp in progress(items, desc="convert", unit="slide", mininterval=10)
    ]
