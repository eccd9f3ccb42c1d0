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

import copy
import json
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
import zarr

from wsiseg.store.bands import BandReader
from wsiseg.nn.data import MEAN, STD
from wsiseg.imaging.instances import METHODS as SPLIT_METHODS
from wsiseg.imaging.instances import min_distance_px, split_mask
from wsiseg.utils.io import atomic_path, check_output, release_memory
from wsiseg.utils.logs import StepTimes, progress
from wsiseg.nn.module import load_model
from wsiseg.modelcard import ModelSpec, label_names, resolve_model
from wsiseg.patches import grid_positions
from wsiseg.imaging.postprocess import postprocess_mask
from wsiseg.utils.prefetch import prefetch
from wsiseg.config.params import PredictParams
from wsiseg.imaging.stain import normalise_batch
from wsiseg.store.prediction import image_attrs, label_attrs
from wsiseg.resolution import PixelSize, ResolutionError, slide_downscale, unknown_scale_message
from wsiseg.store.slide import PyramidWriter, SlideStore, build_pyramid, compressor, interleave, level_count
from wsiseg.imaging.tissue import METHODS as TISSUE_METHODS
from wsiseg.imaging.tissue import TissueMap

log = logging.getLogger(__name__)

TTA_OPS = ("hflip", "vflip", "rot90")


def blend_window(size: int, mode: str = "gaussian", overlap: int = 0) -> np.ndarray:
    """(size, size) float32 blending weights, strictly positive.

    ``gaussian``: sigma = size / 8 (as MONAI); ``ramp``: linear over the
    ``overlap`` border; ``constant``: plain average."""
    if mode == "gaussian":
        coords = np.arange(size, dtype=np.float32) - (size - 1) / 2
        line = np.exp(-(coords**2) / (2 * (size / 8) ** 2))
    elif mode == "ramp":
        i = np.arange(size, dtype=np.float32) + 0.5
        line = np.clip(np.minimum(i, size - i) / max(overlap, 1), 0, 1)
    elif mode == "constant":
        line = np.ones(size, np.float32)
    else:
        raise ValueError(f"unknown blend mode {mode!r}; use gaussian, ramp or constant")
    window = np.outer(line, line)
    return np.maximum(window / window.max(), 1e-4).astype(np.float32)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_ensemble(checkpoints: Sequence[str | Path], device: torch.device) -> list[torch.nn.Module]:
    """Load one or more checkpoints; they must share the training resolution (um/px and downscale) and stain normaliser."""
    models = [load_model(c, map_location=device).to(device) for c in checkpoints]
    scales = {training_resolution(m) for m in models}
    if len(scales) != 1:
        raise ValueError(f"checkpoints {list(map(str, checkpoints))} were trained at different resolutions (um/px, downscale) {sorted(scales, key=str)}")
    stains = {json.dumps(m.hparams.get("stain"), sort_keys=True) for m in models}
    if len(stains) != 1:  # one tile batch feeds every member: they must agree on its colours
        raise ValueError(f"checkpoints {list(map(str, checkpoints))} were trained with different stain normalisers")
    return models


def training_resolution(model: torch.nn.Module) -> tuple[float | None, float | None]:
    """(um per model pixel, level-0 pixels per model pixel) a model was trained at; either may be None
    (checkpoints from before pixel sizes were recorded have no um/px)."""
    mpp, downscale = model.hparams.get("mpp"), model.hparams.get("downscale")
    return (float(mpp) if mpp else None), (float(downscale) if downscale is not None else None)


def object_limits(params: PredictParams, pixel: PixelSize, where: str) -> tuple[int, int]:
    """(min_area, max_hole) in level-0 pixels: the ``_um2`` settings converted with the slide's pixel size, else the pixel ones."""
    limits = []
    for px, um2, key in ((params.min_area, params.min_area_um2, "min_area_um2"), (params.max_hole, params.max_hole_um2, "max_hole_um2")):
        if um2 is None:
            limits.append(int(px))
        elif not pixel.known:
            raise ResolutionError(unknown_scale_message(where, f"`predict.{key}`"))
        else:
            limits.append(int(round(um2 / pixel.mpp**2)))
    return limits[0], limits[1]


def _tta_pairs(ops: Sequence[str]):
    unknown = sorted(set(ops) - set(TTA_OPS))
    if unknown:
        raise ValueError(f"unknown TTA op(s) {unknown}; use {list(TTA_OPS)}")
    pairs = [(lambda x: x, lambda x: x)]
    if "hflip" in ops:
        pairs.append((lambda x: x.flip(3), lambda x: x.flip(3)))
    if "vflip" in ops:
        pairs.append((lambda x: x.flip(2), lambda x: x.flip(2)))
    if "rot90" in ops:
        pairs.append((lambda x: x.rot90(1, (2, 3)), lambda x: x.rot90(-1, (2, 3))))
    return pairs


def probabilities(logits: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid of a single foreground channel, softmax over several classes; into ``out``
    (contiguous, the logits' shape) when given, else a new tensor.

    Strided logits (e.g. one channel sliced out of a wider output) are made contiguous
    first: torch's sigmoid runs element by element on them, 2x slower than copy + sigmoid."""
    if logits.shape[1] > 1:
        return torch.softmax(logits, dim=1) if out is None else torch.softmax(logits, dim=1, out=out)
    if logits.is_contiguous():
        return torch.sigmoid(logits) if out is None else torch.sigmoid(logits, out=out)
    return torch.sigmoid_(logits.contiguous() if out is None else out.copy_(logits))


def predict_batch(models: Sequence[torch.nn.Module], batch: torch.Tensor, tta: Sequence[str] = ()) -> torch.Tensor:
    """Probabilities (n, channels, h, w) averaged over models and TTA views.

    One channel (foreground) for binary models, one per class otherwise."""
    return average_probabilities(forward_views(models, batch, tta))


GPU_DTYPE = torch.float16  # predict's autocast precision on a GPU (16-mixed)
# layers whose weights autocast casts to its lower precision before every call (exactly these types: a
# subclass may use its weights otherwise, e.g. standardise them in float32 first)
AUTOCAST_WEIGHTS = (
    torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d, torch.nn.Linear,
)


def precast(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model`` whose convolution and linear layers hold their weights and biases in ``dtype``, as
    autocast (to ``dtype``) casts them before every call: under autocast its outputs are the same, without
    re-casting every weight for every batch (a U-Net/resnet34: ~50 casts per batch; autocast's weight cache
    lasts one autocast region and does not work under ``inference_mode``).  ``model`` is left as it is."""
    cast = copy.deepcopy(model)
    for module in cast.modules():
        if type(module) in AUTOCAST_WEIGHTS:
            module.to(dtype)
    return cast


def precast_checked(model: torch.nn.Module, dtype: torch.dtype, tile: torch.Tensor) -> torch.nn.Module:
    """:func:`precast` of ``model`` if, on one ``tile`` batch under autocast, it runs and gives the model's own
    outputs; else (e.g. a layer run with autocast switched off, whose input then stays float32) ``model`` itself,
    with a warning saying why: its weights are then cast for every batch, as before."""
    cast = precast(model, dtype)
    with torch.inference_mode(), torch.autocast(tile.device.type, dtype=dtype):
        expected = model(tile)
        try:
            got = cast(tile)
        except RuntimeError as err:
            log.warning("predict: the model's weights are cast for every batch (casting them once failed: %s)", err)
            return model
    if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), rtol=1e-3, atol=1e-3):
        log.warning("predict: the model's weights are cast for every batch (cast once, its outputs differed)")
        return model
    return cast


def forward_views(models: Sequence[torch.nn.Module], batch: torch.Tensor, tta: Sequence[str] = ()) -> list[tuple[torch.Tensor, Callable]]:
    """The logits of every model on every TTA view of ``batch``, each with the function that maps it back
    (the model's work alone; :func:`average_probabilities` does the rest)."""
    autocast = batch.device.type == "cuda"
    with torch.inference_mode(), torch.autocast(batch.device.type, dtype=GPU_DTYPE if autocast else None, enabled=autocast):
        return [(model(forward(batch)), inverse) for model in models for forward, inverse in _tta_pairs(tta)]


def average_probabilities(outputs: Sequence[tuple[torch.Tensor, Callable]], out: torch.Tensor | None = None) -> torch.Tensor:
    """Mean probability over :func:`forward_views`'s outputs (element-wise work: one thread on the CPU),
    summed into ``out`` when given (contiguous, the outputs' shape: e.g. a buffer reused batch after batch,
    which spares allocating and page-faulting fresh memory for every batch)."""
    total = None
    with torch.inference_mode(), _elementwise(outputs[0][0].device):
        for logits, inverse in outputs:
            p = inverse(probabilities(logits.float(), out if total is None else None))
            total = p if total is None else total.add_(p)
        if len(outputs) > 1:
            total.div_(len(outputs))
    return total


class _Plan:
    """Tile grid of one slide at the model resolution, with tissue filtering.

    When tissue detection keeps fewer than ``tissue_fallback`` of the tiles
    (none at all, typically: a method that does not suit the slide, such as
    saturation on a grayscale fluorescence image), it is not trusted: every
    tile is predicted (``fallback``) and a warning logged."""

    def __init__(self, store: SlideStore, downscale: float, params: PredictParams):
        self.store, self.ds, self.params = store, downscale, params
        self.T = params.tile
        self.dh, self.dw = store.dims(downscale)
        self.ys = grid_positions(self.dh, self.T, self.T - params.overlap)
        self.xs = grid_positions(self.dw, self.T, self.T - params.overlap)
        self.tissue = TissueMap(store, params.tissue_saturation, method=params.tissue_method)
        span = int(math.ceil(self.T * self.ds))
        self.keep = np.array(
            [[self.tissue.fraction(int(y * self.ds), int(x * self.ds), span, span) >= params.min_tissue for x in self.xs] for y in self.ys]
        )
        self.total = int(self.keep.size)
        kept = int(self.keep.sum())
        self.fallback = kept < params.tissue_fallback * self.total
        if self.fallback:
            log.warning(
                "predict %s: tissue detection (%s) kept %d of %d tiles (tissue %.2f%% of the slide, below "
                "predict.tissue_fallback %g): it does not suit this slide, predicting every tile instead; "
                "set predict.tissue_method (e.g. fluorescence for bright-on-dark images) to skip background",
                store.slide_id, self.tissue.method, kept, self.total, 100 * self.tissue.share, params.tissue_fallback,
            )
            self.keep[:] = True
        self.skipped = self.total - int(self.keep.sum())

    def strips(self) -> list[tuple[int, int]]:
        """Column ranges [b0, b1) of the model grid predicted one after the other.

        Slides wider than 1.5 ``params.strip`` go in strips of that width (rounded to a chunk
        multiple), so no buffer grows with the slide width; only at integer downscales of 1 or
        more, where every strip border is a chunk corner of the stores at the levels written."""
        chunk = self.params.chunk
        width = max(chunk, self.params.strip // chunk * chunk)
        if not float(self.ds).is_integer() or self.dw <= 1.5 * width:
            return [(0, self.dw)]
        return [(b, min(self.dw, b + width)) for b in range(0, self.dw, width)]

    def strip_tiles(self, b0: int, b1: int) -> list[int]:
        """x positions of the tiles that cover model columns [b0 - 1, b1]: the strip and one column of context."""
        return [x for x in self.xs if self._covers(x, b0, b1)]

    def row_tiles(self, r: int, b0: int, b1: int) -> list[int]:
        """x positions of the tiles of tile row ``r`` to predict in strip [b0, b1)."""
        return [x for x, keep in zip(self.xs, self.keep[r]) if keep and self._covers(x, b0, b1)]

    def _covers(self, x: int, b0: int, b1: int) -> bool:
        """Whether the tile at ``x`` covers part of model columns [b0 - 1, b1]."""
        return x <= b1 and x + self.T > b0 - 1

    def info(self) -> dict:
        """Tissue detection summary for the prediction store's attributes."""
        return {
            "method": self.tissue.method, "requested": self.tissue.requested, "share": round(self.tissue.share, 6),
            "tiles_skipped": self.skipped, "tiles_total": self.total, "fallback": bool(self.fallback),
        }

    def batches(self, b0: int, b1: int) -> Iterator[tuple[int, list[int], list[np.ndarray] | None]]:
        """Per tile row of strip [b0, b1): (row, xs, uint8 tiles) batches, then (row, [], None) when the row is read.

        The tiles are (h, w, 3) views of the row's band, valid until the next row is read."""
        cover = self.strip_tiles(b0, b1)
        left = min(cover)
        bands = BandReader(self.store, self.ds, max(cover) + self.T - left, x0=left)
        for r, y in enumerate(self.ys):
            todo = self.row_tiles(r, b0, b1)
            if todo:  # one read per tile row, the rows it shares with the previous one kept: every chunk decoded once
                band = bands.read(y, self.T)
            for b in range(0, len(todo), self.params.batch_size):
                xs = todo[b : b + self.params.batch_size]
                yield r, xs, [band[:, x - left : x - left + self.T] for x in xs]
            yield r, [], None


class TileNormaliser:
    """uint8 (n, h, w, 3) RGB tiles → normalised float (n, 3, h, w) on the device, equal to
    :func:`wsiseg.nn.data.to_tensor` of each tile (within float rounding), laid out channels_last
    (what convolutions run fastest on: the demo U-Net on CPU takes 0.63 s per 512² tile
    vs 0.93 s NCHW).

    Two steps: :meth:`prepare` runs in the reader thread, :meth:`__call__` in the
    model's.  On the CPU, ``prepare`` normalises (torch, one core, in row blocks that
    stay in cache, scaled and shifted in one ``addcmul``: 3.1 ms per eight 512² tiles vs 4.1 as a multiply
    and an add, numpy's 4.9), so the model's thread only
    runs the model; on a GPU only the uint8 tiles travel and the device normalises.
    Either way the per-channel ``(x - mean) / std`` runs over rows of ``w * 3`` interleaved
    values against a precomputed row of scales and offsets: a (1, 3, 1, 1) broadcast over
    channels_last memory has a 3-long innermost dimension and ran 7x slower.

    Batches come from a pool: :meth:`release` hands one back once nothing reads it any
    more, and the next :meth:`prepare` of its shape fills it again instead of allocating
    (25 MB of fresh, zeroed pages per batch of eight 512² tiles).  On a CUDA device the
    pool's batches are page-locked, so the copy to the device runs while the model
    thread goes on queueing work: from pageable memory the copy waited for the GPU to
    finish the previous batch, which then idled while the next forward was queued
    (H200, U-Net/resnet34, 40k² slide: GPU busy 51%, predict 2.5x its bare forward)."""

    ROWS = 256  # rows of a tile normalised at a time on the CPU (~1.5 MB: in cache)

    def __init__(self, device: torch.device):
        self.device = device
        self._rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._device_rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._free: dict[tuple[int, ...], list[np.ndarray]] = {}  # released batches, by shape and dtype
        self._copied: dict[int, torch.cuda.Event] = {}  # batch address -> its last copy to the device, once queued
        self._lock = threading.Lock()  # prepare and release run in different threads

    def _scale_shift(self, width: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``width * channels`` interleaved scales and offsets (on the CPU)."""
        if (width, channels) not in self._rows:
            mean, std = MEAN[:channels], STD[:channels]
            self._rows[width, channels] = tuple(torch.from_numpy(np.tile(v, width).astype(np.float32)) for v in (1 / std, -mean / std))
        return self._rows[width, channels]

    def _take(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A released batch of ``shape`` and ``dtype`` once its last copy to the device is done, else a new
        one (page-locked for a CUDA device)."""
        with self._lock:
            free = self._free.get((*shape, np.dtype(dtype).str))
            out = free.pop() if free else None
            copied = self._copied.pop(out.ctypes.data, None) if out is not None else None
        if copied is not None:
            copied.synchronize()  # the device has its copy: the memory may be filled again
        if out is not None:
            return out
        if self.device.type != "cuda":
            return np.empty(shape, dtype)
        pinned = torch.empty(int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=torch.uint8, pin_memory=True)
        return pinned.numpy().view(dtype).reshape(shape)  # the array's base keeps the page-locked memory alive

    def prepare(self, tiles: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Reader-thread step for uint8 ``tiles`` (n, h, w, c), or a sequence of (h, w, c) tiles (e.g. views
        of a band: read where they lie, never stacked elsewhere first): the normalised float32 batch on the
        CPU, else the (page-locked, for CUDA) uint8 batch."""
        n, (h, w, c) = len(tiles), tiles[0].shape
        if self.device.type != "cpu":
            out = self._take((n, h, w, c), tiles[0].dtype)
            if isinstance(tiles, np.ndarray):
                np.copyto(out, tiles)
            else:
                np.stack(tiles, out=out)
            return out
        scale, shift = self._scale_shift(w, c)
        out = self._take((n, h, w, c), np.float32)
        rows = torch.from_numpy(out).view(n, h, w * c)
        for i, tile in enumerate(tiles):
            tile = torch.from_numpy(tile if tile.flags.writeable else tile.copy())
            for a in range(0, h, self.ROWS):  # cast, then scale and shift in one pass, in place, while the block is in cache
                block = rows[i, a : a + self.ROWS]
                torch.addcmul(shift, block.copy_(tile[a : a + self.ROWS].reshape(-1, w * c)), scale, out=block)
        return out

    def release(self, prepared: np.ndarray) -> None:
        """Hand a batch from :meth:`prepare` back for reuse; call it once nothing reads it any more (a
        model's output may be a view of its input: after its probabilities are blended)."""
        with self._lock:
            self._free.setdefault((*prepared.shape, prepared.dtype.str), []).append(prepared)

    def __call__(self, prepared: np.ndarray) -> torch.Tensor:
        """Model-thread step: the (n, 3, h, w) channels_last batch on the device."""
        n, h, w, c = prepared.shape
        x = torch.from_numpy(prepared)
        if self.device.type != "cpu":
            if (w, c) not in self._device_rows:
                self._device_rows[w, c] = tuple(v.to(self.device) for v in self._scale_shift(w, c))
            scale, shift = self._device_rows[w, c]
            x = x.to(self.device, non_blocking=True)
            if self.device.type == "cuda":  # prepare() refills this batch only after the copy
                copied = torch.cuda.Event()
                copied.record()
                with self._lock:
                    self._copied[prepared.ctypes.data] = copied
            x = torch.addcmul(shift, x.view(n * h, w * c), scale).view(n, h, w, c)
        return x.permute(0, 3, 1, 2)


def _zeros(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A zero tensor; on the CPU from calloc'd memory, whose pages the kernel zeroes as they are first touched
    (by the blender thread, not the thread that creates the band: ~40 ms at 8k px wide)."""
    return torch.from_numpy(np.zeros(shape, np.float32)) if device.type == "cpu" else torch.zeros(shape, device=device)


class _Blender:
    """Weighted sum of the tile probabilities of the current band of tile rows, on the device.

    Holds (channels, tile, width) sums and (tile, width) weights; :meth:`pop`
    hands out the finished top rows, which move out (the rest shifts up) at the next call."""

    def __init__(self, channels: int, tile: int, width: int, window: np.ndarray, device: torch.device):
        self.T, self.width = tile, width
        self.window = torch.from_numpy(window).to(device)
        self.acc = _zeros((channels, tile, max(width, tile)), device)
        self.weight = _zeros((tile, max(width, tile)), device)
        self.popped = 0  # rows handed out by the last pop, still to move out
        self._probs: torch.Tensor | None = None  # the batch probabilities, one buffer reused for every batch

    def add_views(self, xs: Sequence[int], outputs: Sequence[tuple[torch.Tensor, Callable]]) -> None:
        """Add the mean probabilities of :func:`forward_views`'s ``outputs`` for the tiles at columns ``xs``.

        They are computed into one buffer, batch after batch: a new tensor per batch cost fresh,
        zeroed pages (with a null model at downscale 1, 60% of predict's page faults; zeroing
        pages was 23% of its CPU time)."""
        shape = outputs[0][0].shape
        if self._probs is None or self._probs.shape[1:] != shape[1:] or len(self._probs) < shape[0]:
            self._probs = torch.empty(shape, device=self.acc.device)
        self.add(xs, average_probabilities(outputs, self._probs[: shape[0]]))

    def add(self, xs: Sequence[int], probs: torch.Tensor) -> None:
        """Add (n, channels, tile, tile) probabilities of the tiles at columns ``xs``."""
        self._shift()
        for x, p in zip(xs, probs):
            self.acc[:, :, x : x + self.T].addcmul_(p, self.window)
            self.weight[:, x : x + self.T] += self.window

    def pop(self, rows: int) -> np.ndarray:
        """The blended probabilities (channels, rows, width) of the top ``rows`` rows (0 where no tile was).

        Divided in place: on the CPU the result is a view of the sums, valid until the next call."""
        self._shift()
        weight = self.weight[:rows, : self.width].clamp_(min=1e-30)  # no tile: 0 / tiny = 0
        prob = self.acc[:, :rows, : self.width].div_(weight)
        self.popped = rows
        return prob.cpu().numpy()

    def _shift(self) -> None:
        """Move the overlap rows below the popped ones up, and clear the rest."""
        rows, self.popped = self.popped, 0
        if not rows:
            return
        rest = self.T - rows
        acc, weight = self.acc[:, rows:], self.weight[rows:]
        if rows < rest:  # the ranges overlap: copy out first
            acc, weight = acc.clone(), weight.clone()
        self.acc[:, :rest] = acc
        self.weight[:rest] = weight
        self.acc[:, rest:] = 0
        self.weight[rest:] = 0


class _BandWriter:
    """Hands finished rows of the blended probability map to the probability and mask pyramid writers
    (level 0 written once, upper levels pooled in memory).

    The probabilities are written on the model's grid when the model read the slide at a
    downscale above 1 (``model_grid``), else upsampled to level 0 with the mask.  The mask
    is always level 0's: the probabilities upsampled (linearly) and thresholded, or their
    arg-max for multi-class models."""

    def __init__(
        self, prob: PyramidWriter, mask: PyramidWriter, size: tuple[int, int], downscale: float, threshold: float, model_grid: bool,
        columns: tuple[int, int, int] | None = None,
    ):
        """``columns`` (left, b0, b1): bands hold model columns from ``b0 - left``; columns [b0, b1) are written
        (a strip; the columns beside it are upsampling context).  Default: the whole width."""
        self.prob, self.mask, self.ds, self.threshold, self.model_grid = prob, mask, downscale, threshold, model_grid
        self.height = size[0]
        left, b0, b1 = columns or (0, 0, int(math.ceil(size[1] / downscale)))
        self.left, self.cols = left, b1 - b0  # model columns: context before the strip, and the strip's
        self.skip = int(round(left * downscale))  # level-0 columns of context before the strip
        self.width = min(size[1], int(round(b1 * downscale))) - int(round(b0 * downscale))  # level-0 columns written
        self.top = 0  # first model row not yet upsampled
        self.carry: np.ndarray | None = None  # (channels, ctx + 1, width): the row above self.top (ctx = 1 below the first band), and self.top's

    def write(self, y0: int, band: np.ndarray) -> None:
        """Write a (channels, rows, width) probability band that starts at model-resolution row ``y0``
        (bands come in order, each starting where the last ended).

        The band's last row waits for the next band: upsampling it needs the row below,
        so rows join across bands exactly as one resize of the whole map would."""
        expected = self.top + (self.carry is not None)  # a carried row is row self.top, not yet written
        if y0 != expected:
            raise ValueError(f"probability band at row {y0} out of order (expected {expected})")
        if self.model_grid:
            self.prob.add(_to_uint8(interleave(band[:, :, self.left : self.left + self.cols])))
        if self.ds == 1:  # level 0 is the model's grid: nothing to upsample, no row waits for the next band
            self._upsample(band, 0, band.shape[1])
            return
        rows = band if self.carry is None else np.concatenate([self.carry, band], axis=1)
        ctx = 0 if self.carry is None else self.carry.shape[1] - 1
        self._upsample(rows, ctx, rows.shape[1] - ctx - 1)
        self.carry = np.array(rows[:, -2:])  # a copy: the band may be a view of the blender's sums

    def flush(self) -> None:
        """Write the last row (after the last band)."""
        if self.carry is not None:
            ctx = self.carry.shape[1] - 1
            self._upsample(self.carry, ctx, self.carry.shape[1] - ctx)
            self.carry = None

    def _upsample(self, rows: np.ndarray, ctx: int, count: int, step_rows: int = 256) -> None:
        """Upsample and write ``count`` model rows of ``rows`` from row ``ctx`` (the rows around them are context).

        In slices of about ``step_rows`` level-0 rows, each with one source row of context on
        both sides: memory stays small even for 100k-px-wide slides."""
        step = max(1, int(step_rows // self.ds))
        for a in range(0, count, step):
            b = min(count, a + step)
            lo, hi = max(0, ctx + a - 1), min(rows.shape[1], ctx + b + 1)
            self._write_slice(self.top + a, rows[:, lo:hi], ctx + a - lo, b - a)
        self.top += count

    def _write_slice(self, y: int, src: np.ndarray, skip: int, count: int) -> None:
        top = int(round(y * self.ds))
        bottom = min(self.height, int(round((y + count) * self.ds)))
        if bottom <= top:
            return
        hwc = interleave(src)
        size = (int(round(src.shape[2] * self.ds)), int(round(src.shape[1] * self.ds)))
        up = hwc if self.ds == 1 else cv2.resize(hwc, size, interpolation=cv2.INTER_LINEAR)
        first = int(round(skip * self.ds))
        up = up.reshape(up.shape[0], up.shape[1], -1)[first : first + bottom - top, self.skip : self.skip + self.width]
        if not self.model_grid:
            self.prob.add(_to_uint8(up))
        if up.shape[2] == 1:
            self.mask.add((up > self.threshold).view(np.uint8))
        else:  # multi-class: the most probable class index
            self.mask.add(up.argmax(axis=2).astype(np.uint8)[:, :, None])


def _to_uint8(prob: np.ndarray) -> np.ndarray:
    """(h, w, c) probabilities 0..1 → uint8 x 255, rounded."""
    return cv2.convertScaleAbs(prob, alpha=255).reshape(prob.shape)


@contextmanager
def _elementwise(device: torch.device) -> Iterator[None]:
    """One torch thread on CPU for the element-wise work around the model (probabilities, blending).

    Those kernels touch a few megabytes each and gain nothing from a second
    thread, while splitting them across threads makes each wait for the core
    that the reader and writer threads are using (measured: 2-3x slower on
    two busy cores).  The model itself keeps every thread."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _single_thread() -> None:
    """Thread initializer: torch ops of this thread use one core (the model's thread keeps every core)."""
    torch.set_num_threads(1)


def _model_ready(models: Sequence[torch.nn.Module], device: torch.device, tile: int) -> list[torch.nn.Module]:
    """``models`` laid out channels_last (in place, as the input: see TileNormaliser); on a GPU, where
    :func:`forward_views` runs them under autocast, as :func:`precast_checked` copies (weights cast once, not for
    every batch), checked on one random ``tile``² batch."""
    for model in models:
        model.to(memory_format=torch.channels_last)
    if device.type != "cuda":
        return list(models)
    noise = torch.Generator(device).manual_seed(0)
    probe = torch.randn((1, 3, tile, tile), generator=noise, device=device).contiguous(memory_format=torch.channels_last)
    return [precast_checked(model, GPU_DTYPE, probe) for model in models]


def _blend_rows(
    plan: _Plan, strip: tuple[int, int], models, device: torch.device, writer: _BandWriter, channels: int, bar, times: StepTimes
) -> None:
    """Predict every tile row of ``plan`` in model columns ``strip`` with ``models`` (from :func:`_model_ready`) and
    hand the blended rows to ``writer``.

    Three threads, so the model's never waits: the reader reads, cuts and normalises
    tiles ahead; this thread runs the model; the blender adds its probabilities into
    the band and, when a tile row is complete, writes the finished rows (its
    PyramidWriters compress in their own threads).  Queues are a few batches deep:
    memory holds a few bands, never the slide.  Each thread's steps are timed into ``times``."""
    T, (b0, b1) = plan.T, strip
    cover = plan.strip_tiles(b0, b1)
    left, c0, c1 = min(cover), max(0, b0 - 1), min(plan.dw, b1 + 1)  # band origin; strip with a context column each side
    blender = _Blender(channels, T, max(cover) + T - left, blend_window(T, plan.params.blend, plan.params.overlap), device)
    to_batch = TileNormaliser(device)

    def finish_row(r: int) -> None:
        y = plan.ys[r]
        final = (plan.ys[r + 1] - y) if r + 1 < len(plan.ys) else min(T, plan.dh - y)
        with times.step("blender: rows to the host"):  # on a GPU: waits for the device's work queued so far
            rows = blender.pop(final)
        with times.step("blender: writing rows"):
            writer.write(y, rows[:, :, c0 - left : c1 - left])
        bar.update(1)

    stain = models[0].hparams.get("stain")  # the training run's stain normaliser, if any: applied in the reader thread

    def batches() -> Iterator[tuple[int, list[int], np.ndarray | None]]:  # runs in the reader thread
        for r, xs, tiles in times.waiting("reader: reading tiles", plan.batches(b0, b1)):
            if tiles is not None:
                with times.step("reader: preparing batches"):
                    tiles = to_batch.prepare(normalise_batch(tiles, stain))
            yield r, [x - left for x in xs], tiles

    def add(xs: list[int], outputs: list, prepared: np.ndarray) -> None:
        with times.step("blender: blending"):
            blender.add_views(xs, outputs)
        to_batch.release(prepared)  # read by nothing now (a model's output may have been a view of it)

    init = _single_thread if device.type == "cpu" else None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsiseg-blender", initializer=init) as blend:
        pending: deque = deque()
        for r, xs, tiles in times.waiting("model: waiting for tiles", prefetch(batches(), plan.params.prefetch, init, "wsiseg-reader")):
            if tiles is None:
                pending.append(blend.submit(finish_row, r))
            else:
                with times.step("model: forward"):  # on a GPU: queueing the work (it runs asynchronously)
                    outputs = forward_views(models, to_batch(tiles), plan.params.tta)  # the model only: the rest in the blender
                pending.append(blend.submit(add, xs, outputs, tiles))
            with times.step("model: waiting for the blender"):
                while len(pending) > plan.params.prefetch:  # the blender at most a few batches behind
                    pending.popleft().result()
        with times.step("model: waiting for the blender"):
            for job in pending:
                job.result()
    with times.step("blender: writing rows"):
        writer.flush()


def predict_slide(
    slide: str | Path,
    checkpoints: str | Path | Sequence[str | Path] | ModelSpec,
    out: str | Path,
    params: PredictParams = PredictParams(),
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
    # the checkpoints' sha256 (0.1-0.5 s each) is computed while the models load and the tissue map is made,
    # and checked against the model cards before any tile is predicted
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
            "differs from the training slides', set its `mpp` column in the sample sheet or `convert.default_mpp`", store.slide_id, ds,
        )
    min_area, max_hole = object_limits(params, pixel, str(slide))
    classes = int(models[0].hparams.get("classes", 1))
    plan = _Plan(store, ds, params)
    log.info(
        "predict %s: %dx%d at downscale %g (slide %s, model %s), %d tiles of %d px, %d model(s) x %d TTA view(s) on %s",
        store.slide_id, plan.dw, plan.dh, ds, pixel, f"{model_mpp:g} um/px" if model_mpp else "pixel scale",
        plan.total, plan.T, len(models), 1 + len(params.tta), device,
    )
    log.info(
        "predict %s: tissue method %s%s, tissue %.1f%% of the slide, %d of %d tiles skipped (min_tissue %g)",
        store.slide_id, plan.tissue.method, " (auto)" if params.tissue_method == "auto" else "", 100 * plan.tissue.share,
        plan.skipped, plan.total, params.min_tissue,
    )
    provenance = {**provenance_job.result(), "config_hash": config_hash}
    card_names = spec.class_names if classes > 1 or class_name == "foreground" else None  # a given class_name wins
    names = label_names(classes, class_names or card_names, class_name)
    # fast: outputs are written while the model computes.  No shuffle: on uint8 probabilities and masks
    # bit-shuffling made lz4 2-3x slower (encode and decode) for no smaller files (demo probabilities 6.8x
    # smaller unshuffled vs 5.6x; masks 115x vs 142x)
    codec = compressor("lz4", 5, "none")
    levels = level_count(store.height, store.width, params.chunk)
    clean = bool(min_area or max_hole or params.split_objects) and classes == 1  # post-processing: mask pyramid afterwards
    size = (store.height, store.width)
    model_grid = ds > 1  # probabilities stored on the model's grid (a finer model's are stored at level 0)
    prob_size, prob_scale = ((plan.dh, plan.dw), ds) if model_grid else (size, 1.0)
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
        bar = progress(total=len(plan.ys) * len(strips), desc=f"predict {store.slide_id}", unit="tile row", mininterval=5)
        ready = _model_ready(models, device, plan.T)  # once for every strip
        times, start = StepTimes(), time.perf_counter()
        for i, (b0, b1) in enumerate(strips):
            columns = (b0 - max(0, b0 - 1), b0, b1)
            level0 = int(round(b0 * ds))  # the strip's first level-0 column
            with (
                PyramidWriter(
                    root, (classes, *prob_size), prob_direct, params.chunk, codec, "mean", 1, b0 if model_grid else level0, i == 0
                ) as prob,
                PyramidWriter(mask_group, size, mask_direct, params.chunk, codec, "max", 1, level0, i == 0) as mask,
            ):
                writer = _BandWriter(prob, mask, size, ds, params.threshold, model_grid, columns)
                _blend_rows(plan, (b0, b1), ready, device, writer, classes, bar, times)
            release_memory()  # what the strip's buffers held goes back to the system: peak memory stays one strip's
        bar.close()
        tiles_s = time.perf_counter() - start
        log.info(
            "predict %s: tiles predicted in %.2f s; %s", store.slide_id, tiles_s, times.summary(),
            extra={"step_seconds": {"tiles": tiles_s, **times.seconds}},
        )
        if prob_direct < prob_levels:
            build_pyramid(root, prob_levels, params.chunk, codec, "mean", start=prob_direct)
        if not clean and mask_direct < levels:
            build_pyramid(mask_group, levels, params.chunk, codec, "max", start=mask_direct)
        if clean:
            if min_area or max_hole:
                postprocess_mask(mask_group["0"], min_area, max_hole)
            if params.split_objects:
                split_mask(mask_group["0"], min_distance_px(params.split_min_distance_um, pixel.mpp, params.split_min_distance_px))
            build_pyramid(mask_group, levels, params.chunk, codec, "max")
        labels.attrs["labels"] = ["mask"]
        mask_group.update_attributes(label_attrs(levels, names, pixel.mpp))
        root.update_attributes(
            {
                **image_attrs(f"{store.slide_id} probability", prob_levels, names[1:] if classes == 1 else names, pixel.mpp, prob_scale),
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
                "tile": plan.T,
                "overlap": params.overlap,
                "threshold": params.threshold,
                "tta": list(params.tta),
                "classes": classes,
                "tiles_skipped": plan.skipped,
                "tiles_total": plan.total,
                "tissue": plan.info(),
            }
        )
    log.info(
        "predict %s: done, %d of %d tiles skipped as non-tissue (tissue method %s%s)", store.slide_id, plan.skipped, plan.total,
        plan.tissue.method, ", fallback: every tile predicted" if plan.fallback else "",
    )
    return Path(out)


def _aligned_levels(strip: int, chunk: int) -> int:
    """Number of 2x pyramid levels at which a ``strip``-column-wide strip is a whole number of chunks."""
    k = 0
    while strip % (chunk * 2**k) == 0:
        k += 1
    return k


def _check_params(params: PredictParams) -> None:
    if params.overlap >= params.tile:
        raise ValueError(f"predict.overlap ({params.overlap}) must be smaller than predict.tile ({params.tile})")
    _tta_pairs(params.tta)
    if params.split_objects not in (None, *SPLIT_METHODS):
        raise ValueError(f"predict.split_objects {params.split_objects!r} is unknown; choose from {list(SPLIT_METHODS)} or null")
    if params.tissue_method not in TISSUE_METHODS:
        raise ValueError(f"predict.tissue_method {params.tissue_method!r} is unknown; choose from {list(TISSUE_METHODS)}")


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
        predict_slide(slide, spec, out_dir / Path(slide).name, params, models, class_names, class_name, config_hash)
        for slide in progress(slides, desc="predict", unit="slide", mininterval=10)
    ]
