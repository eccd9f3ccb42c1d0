"""The models that predict: device choice, checkpoint ensembles, test-time augmentation (TTA), and on a GPU
the precast copies whose weights are cast to autocast's precision once.
"""

from __future__ import annotations

import copy
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from wsiseg.errors import ConfigError, ModelError
from wsiseg.export import load_exported
from wsiseg.modelcard import check_checkpoint
from wsiseg.nn.module import load_model

log = logging.getLogger(__name__)


TTA_OPS = ("hflip", "vflip", "rot90")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_ensemble(checkpoints: Sequence[str | Path], device: torch.device) -> list[torch.nn.Module]:
    """Load one or more checkpoints; each must be the model its model card describes (when one lists it:
    classes and training resolution), and they must share the classes, training resolution (um/px and
    downscale), stain normaliser and input normalisation.  A network ``wsiseg export`` wrote (its folder's model
    card lists it) loads as the :class:`wsiseg.export.ExportedModel` that runs it."""
    models = [(load_exported(c) or load_model(c, map_location=device)).to(device) for c in checkpoints]
    for checkpoint, model in zip(checkpoints, models):
        check_checkpoint(checkpoint, model.hparams)
    classes = {int(m.hparams.get("classes", 1)) for m in models}
    if len(classes) != 1:  # their probabilities are averaged channel by channel
        raise ModelError(
            f"checkpoints {list(map(str, checkpoints))} predict different numbers of classes {sorted(classes)}; "
            "an ensemble averages the probabilities of one set of classes"
        )
    scales = {training_resolution(m) for m in models}
    if len(scales) != 1:
        raise ModelError(
            f"checkpoints {list(map(str, checkpoints))} were trained at different resolutions (um/px, downscale) {sorted(scales, key=str)}"
        )
    stains = {json.dumps(m.hparams.get("stain"), sort_keys=True) for m in models}
    if len(stains) != 1:  # one tile batch feeds every member: they must agree on its colours
        raise ModelError(f"checkpoints {list(map(str, checkpoints))} were trained with different stain normalisers")
    if len({bool(m.hparams.get("contour_weight")) for m in models}) != 1:
        raise ModelError(
            f"checkpoints {list(map(str, checkpoints))} mix contour-aware models (train.contour_weight > 0) and others"
        )
    norms = {json.dumps(m.hparams.get("normalize"), sort_keys=True) for m in models}
    if len(norms) != 1:  # the same: one normalised batch feeds every member
        raise ModelError(
            f"checkpoints {list(map(str, checkpoints))} normalise their input differently (train.normalize / "
            f"their encoders' weights: {sorted(norms)})"
        )
    return models


def training_resolution(model: torch.nn.Module) -> tuple[float | None, float | None]:
    """(um per model pixel, level-0 pixels per model pixel) a model was trained at; either may be None
    (checkpoints from before pixel sizes were recorded have no um/px)."""
    mpp, downscale = model.hparams.get("mpp"), model.hparams.get("downscale")
    return (float(mpp) if mpp else None), (float(downscale) if downscale is not None else None)


def tta_pairs(ops: Sequence[str]):
    unknown = sorted(set(ops) - set(TTA_OPS))
    if unknown:
        raise ConfigError(f"unknown TTA op(s) {unknown}; use {list(TTA_OPS)}")
    pairs = [(lambda x: x, lambda x: x)]
    if "hflip" in ops:
        pairs.append((lambda x: x.flip(3), lambda x: x.flip(3)))
    if "vflip" in ops:
        pairs.append((lambda x: x.flip(2), lambda x: x.flip(2)))
    if "rot90" in ops:
        pairs.append((lambda x: x.rot90(1, (2, 3)), lambda x: x.rot90(-1, (2, 3))))
    return pairs


def probabilities(logits: torch.Tensor, out: torch.Tensor | None = None, independent: bool = False) -> torch.Tensor:
    """Sigmoid of a single foreground channel, softmax over several classes, sigmoid of each channel when they
    are ``independent`` (a contour-aware model's foreground and contour); into ``out``
    (contiguous, the logits' shape) when given, else a new tensor.

    Strided logits (e.g. one channel sliced out of a wider output) are made contiguous
    first: torch's sigmoid runs element by element on them, slower than copy + sigmoid
    (benchmarks/journal/predict.md)."""
    if logits.shape[1] > 1 and not independent:
        return torch.softmax(logits, dim=1) if out is None else torch.softmax(logits, dim=1, out=out)
    if logits.is_contiguous():
        return torch.sigmoid(logits) if out is None else torch.sigmoid(logits, out=out)
    return torch.sigmoid_(logits.contiguous() if out is None else out.copy_(logits))


def predict_batch(models: Sequence[torch.nn.Module], batch: torch.Tensor, tta: Sequence[str] = ()) -> torch.Tensor:
    """Probabilities (n, channels, h, w) averaged over models and TTA views.

    One channel (foreground) for binary models, one per class otherwise; a contour-aware model's second
    channel is its contour probability."""
    return average_probabilities(forward_views(models, batch, tta), independent=has_contour(models))


def has_contour(models: Sequence[torch.nn.Module]) -> bool:
    """Whether the models (of one ensemble) are contour-aware: foreground and contour channels."""
    return bool(models[0].hparams.get("contour_weight"))


GPU_DTYPE = torch.float16  # predict's autocast precision on a GPU (16-mixed)
# layers whose weights autocast casts to its lower precision before every call (exactly these types: a
# subclass may use its weights otherwise, e.g. standardise them in float32 first)
AUTOCAST_WEIGHTS = (
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d,
    torch.nn.Linear,
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


def forward_views(
    models: Sequence[torch.nn.Module], batch: torch.Tensor, tta: Sequence[str] = ()
) -> list[tuple[torch.Tensor, Callable]]:
    """The logits of every model on every TTA view of ``batch``, each with the function that maps it back
    (the model's work alone; :func:`average_probabilities` does the rest)."""
    autocast = batch.device.type == "cuda"
    with (
        torch.inference_mode(),
        torch.autocast(batch.device.type, dtype=GPU_DTYPE if autocast else None, enabled=autocast),
    ):
        return [(model(forward(batch)), inverse) for model in models for forward, inverse in tta_pairs(tta)]


def average_probabilities(
    outputs: Sequence[tuple[torch.Tensor, Callable]], out: torch.Tensor | None = None, independent: bool = False
) -> torch.Tensor:
    """Mean probability over :func:`forward_views`'s outputs (element-wise work: one thread on the CPU),
    summed into ``out`` when given (contiguous, the outputs' shape: e.g. a buffer reused batch after batch,
    which spares allocating and page-faulting fresh memory for every batch)."""
    total = None
    with torch.inference_mode(), elementwise_threads(outputs[0][0].device):
        for logits, inverse in outputs:
            p = inverse(probabilities(logits.float(), out if total is None else None, independent))
            total = p if total is None else total.add_(p)
        if len(outputs) > 1:
            total.div_(len(outputs))
    return total


def ready_models(models: Sequence[torch.nn.Module], device: torch.device, tile: int) -> list[torch.nn.Module]:
    """``models`` laid out channels_last (in place, as the input: see TileNormaliser); on a GPU, where
    :func:`forward_views` runs them under autocast, as :func:`precast_checked` copies (weights cast once, not for
    every batch), checked on one random ``tile``² batch."""
    for model in models:
        model.to(memory_format=torch.channels_last)
    if device.type != "cuda":
        return list(models)
    noise = torch.Generator(device).manual_seed(0)
    probe = torch.randn((1, 3, tile, tile), generator=noise, device=device).contiguous(
        memory_format=torch.channels_last
    )
    return [precast_checked(model, GPU_DTYPE, probe) for model in models]


@contextmanager
def elementwise_threads(device: torch.device) -> Iterator[None]:
    """One torch thread on CPU for the element-wise work around the model (probabilities, blending).

    Those kernels touch a few megabytes each and gain nothing from a second
    thread, while splitting them across threads makes each wait for the core
    that the reader and writer threads are using (much slower on two busy cores;
    see benchmarks/journal/code-comments.md).  The model itself keeps every thread."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
