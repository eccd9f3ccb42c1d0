"""Predict's streaming machinery: tiles normalised on their way to the device, overlapping tile probabilities
blended (no seams), finished rows written with their pyramid, and the three threads that keep the model busy.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch

from wsiseg.errors import ConfigError
from wsiseg.imaging.stain import normalise_batch
from wsiseg.nn.data import mean_std
from wsiseg.predict.ensemble import average_probabilities, forward_views, has_contour
from wsiseg.predict.plan import TilePlan
from wsiseg.store.chunks import interleave
from wsiseg.store.pyramid import PyramidWriter
from wsiseg.utils.logs import StepTimes
from wsiseg.utils.prefetch import prefetch


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
        raise ConfigError(f"unknown blend mode {mode!r}; use gaussian, ramp or constant")
    window = np.outer(line, line)
    return np.maximum(window / window.max(), 1e-4).astype(np.float32)


class TileNormaliser:
    """uint8 (n, h, w, 3) RGB tiles → normalised float (n, 3, h, w) on the device, equal to
    :func:`wsiseg.nn.data.to_tensor` of each tile (within float rounding), laid out channels_last
    (what convolutions run fastest on: the demo U-Net on CPU runs faster than NCHW;
    ``benchmarks/predict_bench.py`` times both, see benchmarks/journal/predict.md).

    Two steps: :meth:`prepare` runs in the reader thread, :meth:`__call__` in the
    model's.  On the CPU, ``prepare`` normalises (torch, one core, in row blocks that
    stay in cache, scaled and shifted in one ``addcmul``: faster than a multiply and an add,
    or numpy; see benchmarks/journal/code-comments.md), so the model's thread only
    runs the model; on a GPU only the uint8 tiles travel and the device normalises.
    Either way the per-channel ``(x - mean) / std`` runs over rows of ``w * 3`` interleaved
    values against a precomputed row of scales and offsets: a (1, 3, 1, 1) broadcast over
    channels_last memory has a 3-long innermost dimension and ran several times slower
    (benchmarks/journal/predict.md).

    Batches come from a pool: :meth:`release` hands one back once nothing reads it any
    more, and the next :meth:`prepare` of its shape fills it again instead of allocating
    (25 MB of fresh, zeroed pages per batch of eight 512² tiles).  On a CUDA device the
    pool's batches are page-locked, so the copy to the device runs while the model
    thread goes on queueing work: from pageable memory the copy waited for the GPU to
    finish the previous batch, which then idled while the next forward was queued
    (benchmarks/gpu_bench.py; benchmarks/journal/gpu.md)."""

    ROWS = 256  # rows of a tile normalised at a time on the CPU (~1.5 MB: in cache)

    def __init__(self, device: torch.device, normalize: Mapping[str, Sequence[float]] | None = None):
        self.device = device
        self.mean, self.std = mean_std(normalize)  # the model's input mean/std (hparams["normalize"]), 8-bit units
        self._rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._device_rows: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._free: dict[tuple[int, ...], list[np.ndarray]] = {}  # released batches, by shape and dtype
        self._copied: dict[int, torch.cuda.Event] = {}  # batch address -> its last copy to the device, once queued
        self._lock = threading.Lock()  # prepare and release run in different threads

    def _scale_shift(self, width: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of ``width * channels`` interleaved scales and offsets (on the CPU)."""
        if (width, channels) not in self._rows:
            mean, std = self.mean[:channels], self.std[:channels]
            self._rows[width, channels] = tuple(
                torch.from_numpy(np.tile(v, width).astype(np.float32)) for v in (1 / std, -mean / std)
            )
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
            for a in range(
                0, h, self.ROWS
            ):  # cast, then scale and shift in one pass, in place, while the block is in cache
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
    (by the blender thread, so the thread that creates the band does not wait for the zeroing; see
    benchmarks/journal/predict.md, start-up)."""
    return torch.from_numpy(np.zeros(shape, np.float32)) if device.type == "cpu" else torch.zeros(shape, device=device)


class Blender:
    """Weighted sum of the tile probabilities of the current band of tile rows, on the device.

    Holds (channels, tile, width) sums and (tile, width) weights; :meth:`pop`
    hands out the finished top rows, which move out (the rest shifts up) at the next call."""

    def __init__(
        self,
        channels: int,
        tile: int,
        width: int,
        window: np.ndarray,
        device: torch.device,
        independent: bool = False,
    ):
        """``independent``: the channels are separate sigmoid probabilities (a contour-aware model's)."""
        self.tile, self.width, self.independent = tile, width, independent
        self.window = torch.from_numpy(window).to(device)
        self.acc = _zeros((channels, tile, max(width, tile)), device)
        self.weight = _zeros((tile, max(width, tile)), device)
        self.popped = 0  # rows handed out by the last pop, still to move out
        self._probs: torch.Tensor | None = None  # the batch probabilities, one buffer reused for every batch

    def add_views(self, xs: Sequence[int], outputs: Sequence[tuple[torch.Tensor, Callable]]) -> None:
        """Add the mean probabilities of :func:`forward_views`'s ``outputs`` for the tiles at columns ``xs``.

        They are computed into one buffer, batch after batch: a new tensor per batch cost fresh,
        zeroed pages (with a null model at downscale 1, most of predict's page faults, and zeroing
        pages a large share of its CPU time; benchmarks/journal/predict.md)."""
        shape = outputs[0][0].shape
        if self._probs is None or self._probs.shape[1:] != shape[1:] or len(self._probs) < shape[0]:
            self._probs = torch.empty(shape, device=self.acc.device)
        self.add(xs, average_probabilities(outputs, self._probs[: shape[0]], self.independent))

    def add(self, xs: Sequence[int], probs: torch.Tensor) -> None:
        """Add (n, channels, tile, tile) probabilities of the tiles at columns ``xs``."""
        self._shift()
        for x, p in zip(xs, probs):
            self.acc[:, :, x : x + self.tile].addcmul_(p, self.window)
            self.weight[:, x : x + self.tile] += self.window

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
        rest = self.tile - rows
        acc, weight = self.acc[:, rows:], self.weight[rows:]
        if rows < rest:  # the ranges overlap: copy out first
            acc, weight = acc.clone(), weight.clone()
        self.acc[:, :rest] = acc
        self.weight[:rest] = weight
        self.acc[:, rest:] = 0
        self.weight[rest:] = 0


class BandWriter:
    """Hands finished rows of the blended probability map to the probability and mask pyramid writers
    (level 0 written once, upper levels pooled in memory).

    The probabilities are written on the model's grid when the model read the slide at a
    downscale above 1 (``model_grid``), else upsampled to level 0 with the mask.  The mask
    is always level 0's: the probabilities upsampled (linearly) and thresholded, or their
    arg-max for multi-class models."""

    def __init__(
        self,
        prob: PyramidWriter,
        mask: PyramidWriter,
        size: tuple[int, int],
        downscale: float,
        threshold: float,
        model_grid: bool,
        columns: tuple[int, int, int] | None = None,
        binary: bool = False,
    ):
        """``columns`` (left, b0, b1): bands hold model columns from ``b0 - left``; columns [b0, b1) are written
        (a strip; the columns beside it are upsampling context).  Default: the whole width.  ``binary``: the
        mask is channel 0 thresholded whatever the channel count (a contour-aware model's second channel is its
        contour probability), else the arg-max of several channels."""
        self.binary = binary
        self.prob, self.mask, self.downscale, self.threshold, self.model_grid = (
            prob,
            mask,
            downscale,
            threshold,
            model_grid,
        )
        self.height = size[0]
        left, b0, b1 = columns or (0, 0, int(math.ceil(size[1] / downscale)))
        self.left, self.cols = left, b1 - b0  # model columns: context before the strip, and the strip's
        self.skip = int(round(left * downscale))  # level-0 columns of context before the strip
        self.width = min(size[1], int(round(b1 * downscale))) - int(round(b0 * downscale))  # level-0 columns written
        self.top = 0  # first model row not yet upsampled
        self.carry: np.ndarray | None = (
            None  # (channels, ctx + 1, width): the row above self.top (ctx = 1 below the first band), and self.top's
        )

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
        if self.downscale == 1:  # level 0 is the model's grid: nothing to upsample, no row waits for the next band
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
        step = max(1, int(step_rows // self.downscale))
        for a in range(0, count, step):
            b = min(count, a + step)
            lo, hi = max(0, ctx + a - 1), min(rows.shape[1], ctx + b + 1)
            self._write_slice(self.top + a, rows[:, lo:hi], ctx + a - lo, b - a)
        self.top += count

    def _write_slice(self, y: int, src: np.ndarray, skip: int, count: int) -> None:
        top = int(round(y * self.downscale))
        bottom = min(self.height, int(round((y + count) * self.downscale)))
        if bottom <= top:
            return
        hwc = interleave(src)
        size = (int(round(src.shape[2] * self.downscale)), int(round(src.shape[1] * self.downscale)))
        up = hwc if self.downscale == 1 else cv2.resize(hwc, size, interpolation=cv2.INTER_LINEAR)
        first = int(round(skip * self.downscale))
        up = up.reshape(up.shape[0], up.shape[1], -1)[first : first + bottom - top, self.skip : self.skip + self.width]
        if not self.model_grid:
            self.prob.add(_to_uint8(up))
        if up.shape[2] == 1:
            self.mask.add((up > self.threshold).view(np.uint8))
        elif self.binary:
            self.mask.add((up[:, :, :1] > self.threshold).view(np.uint8))
        else:  # multi-class: the most probable class index
            self.mask.add(up.argmax(axis=2).astype(np.uint8)[:, :, None])


def _to_uint8(prob: np.ndarray) -> np.ndarray:
    """(h, w, c) probabilities 0..1 → uint8 x 255, rounded."""
    return cv2.convertScaleAbs(prob, alpha=255).reshape(prob.shape)


def _single_thread() -> None:
    """Thread initializer: torch ops of this thread use one core (the model's thread keeps every core)."""
    torch.set_num_threads(1)


def blend_rows(
    plan: TilePlan,
    strip: tuple[int, int],
    models,
    device: torch.device,
    writer: BandWriter,
    channels: int,
    bar,
    times: StepTimes,
) -> None:
    """Predict every tile row of ``plan`` in model columns ``strip`` with ``models`` (from :func:`ready_models`) and
    hand the blended rows to ``writer``.

    Three threads, so the model's never waits: the reader reads, cuts and normalises
    tiles ahead; this thread runs the model; the blender adds its probabilities into
    the band and, when a tile row is complete, writes the finished rows (its
    PyramidWriters compress in their own threads).  Queues are a few batches deep:
    memory holds a few bands, never the slide.  Each thread's steps are timed into ``times``."""
    T, (b0, b1) = plan.tile, strip
    cover = plan.strip_tiles(b0, b1)
    left, c0, c1 = (
        min(cover),
        max(0, b0 - 1),
        min(plan.width, b1 + 1),
    )  # band origin; strip with a context column each side
    window = blend_window(T, plan.params.blend, plan.params.overlap)
    blender = Blender(channels, T, max(cover) + T - left, window, device, independent=has_contour(models))
    to_batch = TileNormaliser(device, models[0].hparams.get("normalize"))

    def finish_row(r: int) -> None:
        y = plan.ys[r]
        final = (plan.ys[r + 1] - y) if r + 1 < len(plan.ys) else min(T, plan.height - y)
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
        for r, xs, tiles in times.waiting(
            "model: waiting for tiles", prefetch(batches(), plan.params.prefetch, init, "wsiseg-reader")
        ):
            if tiles is None:
                pending.append(blend.submit(finish_row, r))
            else:
                with times.step("model: forward"):  # on a GPU: queueing the work (it runs asynchronously)
                    outputs = forward_views(
                        models, to_batch(tiles), plan.params.tta
                    )  # the model only: the rest in the blender
                pending.append(blend.submit(add, xs, outputs, tiles))
            with times.step("model: waiting for the blender"):
                while len(pending) > plan.params.prefetch:  # the blender at most a few batches behind
                    pending.popleft().result()
        with times.step("model: waiting for the blender"):
            for job in pending:
                job.result()
    with times.step("blender: writing rows"):
        writer.flush()
