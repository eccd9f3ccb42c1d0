"""The segmentation network: every segmentation-models-pytorch architecture, built with settings it trains with.

Which keyword arguments each architecture takes, its defaults and the inputs it accepts are the torch-free
table :data:`wsiseg.config.networks.NETWORKS` (the dry run checks a config against it).  This module turns
config values into an smp model: ``encoder_depth``/``decoder_channels`` None mean the architecture's default,
FPN and PSPNet get the head upsampling that brings their output to input resolution, a plain ViT under DPT
takes any input size its patches tile, and a combination smp cannot build is one :class:`ConfigError` line.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.encoders.timm_vit import TimmViTEncoder
from torch import nn

from wsiseg.config.networks import network_of, network_problems, network_settings, vit_patch
from wsiseg.config.params import TrainParams
from wsiseg.errors import ConfigError
from wsiseg.nn.encoders import timm_kwargs


class _TimmWith:
    """The ``timm`` module as smp's timm encoders see it while a network is built: ``create_model`` adds
    the config's timm keyword arguments (see :func:`timm_arguments`)."""

    def __init__(self, kwargs: Mapping[str, Any]):
        self.kwargs = dict(kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(timm, name)

    def create_model(self, name: str, **given: Any) -> nn.Module:
        return timm.create_model(name, **{**given, **self.kwargs})


@contextmanager
def timm_arguments(kwargs: Mapping[str, Any]) -> Iterator[None]:
    """Within the block, smp's timm encoders create their timm models with ``kwargs`` as well.  They cannot
    go through smp's own keyword arguments: smp's encoder takes ``depth`` (its feature stages), where a
    ViT's ``depth`` is its number of blocks (UNI2-h: 24)."""
    if not kwargs:
        yield
        return
    from segmentation_models_pytorch.encoders import timm_universal, timm_vit

    modules = (timm_universal, timm_vit)
    saved = [m.timm for m in modules]
    try:
        for m in modules:
            m.timm = _TimmWith(kwargs)
        yield
    finally:
        for m, original in zip(modules, saved):
            m.timm = original


class ResampledViTEncoder(TimmViTEncoder):
    """smp's ViT encoder for a patch size that is not a power of two (14: UNI2-h, Virchow2, H-optimus): the
    ViT sees the tile at its own resolution, and its features are resampled from the patch grid to the 1/16
    grid that smp's DPT decoder builds its 1/4..1/32 pyramid from (which needs power-of-two strides)."""

    GRID = 16

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        features, prefix_tokens = super().forward(x)
        size = (x.shape[-2] // self.GRID, x.shape[-1] // self.GRID)
        return [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features], prefix_tokens


def resample_vit_grid(net: nn.Module, readout: str) -> None:
    """Make a DPT ``net`` whose ViT patch is not a power of two work: its encoder becomes a
    :class:`ResampledViTEncoder` (same parameters, same state-dict keys) and its decoder is rebuilt for
    features at 1/16."""
    from segmentation_models_pytorch.base import initialization
    from segmentation_models_pytorch.decoders.dpt.decoder import DPTDecoder

    encoder = net.encoder
    encoder.__class__ = ResampledViTEncoder
    encoder.output_strides = [ResampledViTEncoder.GRID] * len(encoder.output_strides)
    encoder.output_stride = ResampledViTEncoder.GRID
    net.decoder = DPTDecoder(  # smp DPT's default widths, as the decoder it replaces
        encoder_out_channels=encoder.out_channels,
        encoder_output_strides=encoder.output_strides,
        encoder_has_prefix_tokens=encoder.has_prefix_tokens,
        readout=readout,
        intermediate_channels=(256, 512, 1024, 1024),
        fusion_channels=256,
    )
    initialization.initialize_decoder(net.decoder)


def build_network(
    arch: str = TrainParams.arch,
    encoder: str = TrainParams.encoder,
    encoder_weights: str | None = TrainParams.encoder_weights,
    encoder_depth: int | None = TrainParams.encoder_depth,
    decoder_channels: Sequence[int] | None = TrainParams.decoder_channels,
    classes: int = 1,
    *,
    encoder_kwargs: Mapping[str, Any] | None = None,
    sizes: Mapping[str, int] | None = None,
) -> nn.Module:
    """A segmentation-models-pytorch network from plain config values.

    ``encoder_weights`` (e.g. ``imagenet``) downloads pretrained weights
    through smp; the default ``None`` trains from scratch (weights from a file or the hub are loaded by
    :mod:`wsiseg.nn.encoders` after the build).  ``encoder_kwargs`` are timm keyword arguments of a ``tu-``
    encoder (config form: :func:`wsiseg.nn.encoders.timm_kwargs`).  ``sizes`` (config key -> input side, e.g.
    ``patches.size``) are checked with the rest, before anything is built."""
    train = {
        "arch": arch,
        "encoder": encoder,
        "encoder_depth": encoder_depth,
        "decoder_channels": decoder_channels,
        "encoder_kwargs": dict(encoder_kwargs or {}),
    }
    problems = network_problems(train, sizes)
    if problems:
        raise ConfigError("; ".join(problems))
    kwargs: dict[str, Any] = network_settings(arch, encoder_depth, decoder_channels)
    timm_args = timm_kwargs(encoder_kwargs or {})
    found = network_of(arch)
    if found and found[1].timm_only and vit_patch(encoder, encoder_kwargs):
        timm_args["dynamic_img_size"] = True  # timm ViT: any input its patches tile, not only the pretraining size
        if timm_args.get("class_token") is False and not timm_args.get("reg_tokens"):
            kwargs["decoder_readout"] = "ignore"  # no prefix token to read out
    elif found and found[1].timm_only:
        kwargs["decoder_readout"] = "ignore"  # a CNN has no class token to read out (smp's advice)
    try:
        with timm_arguments(timm_args):
            net = smp.create_model(
                arch, encoder_name=encoder, encoder_weights=encoder_weights, in_channels=3, classes=classes, **kwargs
            )
    except (KeyError, ValueError, TypeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"`train.arch` {arch!r} with `train.encoder` {encoder!r} (encoder_depth {kwargs.get('encoder_depth')}): "
            f"segmentation-models-pytorch cannot build it: {reason}"
        ) from None
    patch = vit_patch(encoder, encoder_kwargs) if found and found[1].timm_only else None
    if patch and patch & (patch - 1):
        resample_vit_grid(net, kwargs.get("decoder_readout", "cat"))
    depth = kwargs.get("encoder_depth", 5)
    if found and found[0] == "FPN" and depth < 5 and getattr(net.encoder, "_is_transformer_style", False):
        # its features start at 1/4 scale: FPN's 1/2-scale pyramid level would be empty
        raise ConfigError(
            f"`train.encoder_depth` is {depth}, but `train.arch` FPN with `train.encoder` {encoder!r} "
            "(a transformer-style encoder, no 1/2-scale features) builds with 5 only"
        )
    return net
