"""The segmentation network: every segmentation-models-pytorch architecture, built with settings it trains with.

Which keyword arguments each architecture takes, its defaults and the inputs it accepts are the torch-free
table :data:`wsiseg.config.networks.NETWORKS` (the dry run checks a config against it).  This module turns
config values into an smp model: ``encoder_depth``/``decoder_channels`` None mean the architecture's default,
FPN and PSPNet get the head upsampling that brings their output to input resolution, a plain ViT under DPT
takes any input size its patches tile, and a combination smp cannot build is one :class:`ConfigError` line.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import segmentation_models_pytorch as smp
from torch import nn

from wsiseg.config.networks import network_of, network_problems, network_settings, vit_patch
from wsiseg.config.params import TrainParams
from wsiseg.errors import ConfigError


def build_network(
    arch: str = TrainParams.arch,
    encoder: str = TrainParams.encoder,
    encoder_weights: str | None = TrainParams.encoder_weights,
    encoder_depth: int | None = TrainParams.encoder_depth,
    decoder_channels: Sequence[int] | None = TrainParams.decoder_channels,
    classes: int = 1,
    *,
    sizes: Mapping[str, int] | None = None,
) -> nn.Module:
    """A segmentation-models-pytorch network from plain config values.

    ``encoder_weights`` (e.g. ``imagenet``) downloads pretrained weights
    through smp; the default ``None`` trains from scratch.  ``sizes`` (config key -> input side, e.g.
    ``patches.size``) are checked with the rest, before anything is built."""
    train = {
        "arch": arch,
        "encoder": encoder,
        "encoder_depth": encoder_depth,
        "decoder_channels": decoder_channels,
    }
    problems = network_problems(train, sizes)
    if problems:
        raise ConfigError("; ".join(problems))
    kwargs: dict[str, Any] = network_settings(arch, encoder_depth, decoder_channels)
    found = network_of(arch)
    if found and found[1].timm_only and vit_patch(encoder):
        kwargs["dynamic_img_size"] = True  # timm ViT: any input its patches tile, not only the pretraining size
    elif found and found[1].timm_only:
        kwargs["decoder_readout"] = "ignore"  # a CNN has no class token to read out (smp's advice)
    try:
        net = smp.create_model(
            arch, encoder_name=encoder, encoder_weights=encoder_weights, in_channels=3, classes=classes, **kwargs
        )
    except (KeyError, ValueError, TypeError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"`train.arch` {arch!r} with `train.encoder` {encoder!r} (encoder_depth {kwargs.get('encoder_depth')}): "
            f"segmentation-models-pytorch cannot build it: {reason}"
        ) from None
    depth = kwargs.get("encoder_depth", 5)
    if found and found[0] == "FPN" and depth < 5 and getattr(net.encoder, "_is_transformer_style", False):
        # its features start at 1/4 scale: FPN's 1/2-scale pyramid level would be empty
        raise ConfigError(
            f"`train.encoder_depth` is {depth}, but `train.arch` FPN with `train.encoder` {encoder!r} "
            "(a transformer-style encoder, no 1/2-scale features) builds with 5 only"
        )
    return net
