"""The segmentation networks wsiseg builds, as plain data (no torch): segmentation-models-pytorch's
architectures and encoders, what each architecture takes (encoder depth, decoder widths), its defaults, and the
input sizes it accepts.  The dry run (:mod:`wsiseg.config.checks`) checks a config against this table, and
:mod:`wsiseg.nn.architectures` builds the network from it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

# segmentation-models-pytorch 0.6 architectures and encoders (tests check these
# against the installed smp); timm encoders are any name starting with "tu-".
ARCHS = (
    "DPT",
    "DeepLabV3",
    "DeepLabV3Plus",
    "FPN",
    "Linknet",
    "MAnet",
    "PAN",
    "PSPNet",
    "Segformer",
    "UPerNet",
    "Unet",
    "UnetPlusPlus",
)
ENCODERS = (
    "densenet121",
    "densenet161",
    "densenet169",
    "densenet201",
    "dpn107",
    "dpn131",
    "dpn68",
    "dpn68b",
    "dpn92",
    "dpn98",
    "efficientnet-b0",
    "efficientnet-b1",
    "efficientnet-b2",
    "efficientnet-b3",
    "efficientnet-b4",
    "efficientnet-b5",
    "efficientnet-b6",
    "efficientnet-b7",
    "inceptionresnetv2",
    "inceptionv4",
    "mit_b0",
    "mit_b1",
    "mit_b2",
    "mit_b3",
    "mit_b4",
    "mit_b5",
    "mobilenet_v2",
    "mobileone_s0",
    "mobileone_s1",
    "mobileone_s2",
    "mobileone_s3",
    "mobileone_s4",
    "resnet101",
    "resnet152",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnext101_32x16d",
    "resnext101_32x32d",
    "resnext101_32x48d",
    "resnext101_32x4d",
    "resnext101_32x8d",
    "resnext50_32x4d",
    "se_resnet101",
    "se_resnet152",
    "se_resnet50",
    "se_resnext101_32x4d",
    "se_resnext50_32x4d",
    "senet154",
    "timm-efficientnet-b0",
    "timm-efficientnet-b1",
    "timm-efficientnet-b2",
    "timm-efficientnet-b3",
    "timm-efficientnet-b4",
    "timm-efficientnet-b5",
    "timm-efficientnet-b6",
    "timm-efficientnet-b7",
    "timm-efficientnet-b8",
    "timm-efficientnet-l2",
    "timm-skresnet18",
    "timm-skresnet34",
    "timm-skresnext50_32x4d",
    "timm-tf_efficientnet_lite0",
    "timm-tf_efficientnet_lite1",
    "timm-tf_efficientnet_lite2",
    "timm-tf_efficientnet_lite3",
    "timm-tf_efficientnet_lite4",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "xception",
)


# How wsiseg builds each architecture.  The rules were found by building every architecture with smp 0.6
# (resnet18, tu-resnet10t, tu-convnext_atto, mit_b0 and tu-vit_tiny_patch16_224 encoders; encoder_depth 3-5;
# inputs 32-224 px) and are tested in tests/unit/nn/test_architectures.py.  Torch-free: the dry run uses them.
UNET_CHANNELS = (256, 128, 64, 32, 16)  # smp's U-Net decoder; depth d takes the last d (depth 4: the demo's)


@dataclass(frozen=True)
class Network:
    """What one smp architecture takes from config ``train`` and what its inputs must be."""

    depth: int = 5  # encoder_depth when `train.encoder_depth` is null (smp's default unless noted)
    depths: tuple[int, ...] = (3, 4, 5)  # encoder_depth values it builds and trains with
    # `train.decoder_channels`: "list" = one per encoder stage (null: the last `depth` of UNET_CHANNELS);
    # "int" = one number, written [n] (null: smp's default, `channels`); None = not taken (must be null)
    takes_channels: str | None = None
    channels: int | None = None  # smp's default decoder_channels of an "int" architecture
    max_stride: int = 32  # the encoder's output stride is min(2**depth, max_stride) (dilated encoders: 8 or 16)
    divisible: bool = True  # inputs must be a multiple of the output stride (smp refuses others)
    min_features: int = 1  # the deepest features must be at least this many px a side (PAN's pyramid: 8)
    dilated: bool = False  # the encoder runs dilated (vgg, densenet, xception, inception* cannot)
    timm_only: bool = False  # only `tu-` encoders (DPT); the only one that takes a plain ViT

    def depth_for(self, encoder_depth: int | None) -> int:
        """The encoder depth built for `train.encoder_depth` (null: this architecture's default)."""
        return self.depth if encoder_depth is None else int(encoder_depth)


NETWORKS: dict[str, Network] = {
    "Unet": Network(depth=4, takes_channels="list", divisible=False),  # wsiseg's default: the demo's network
    "UnetPlusPlus": Network(depth=4, takes_channels="list"),  # U-Net family: the demo's depth and channels
    "MAnet": Network(depth=4, takes_channels="list"),
    "Linknet": Network(depth=4),
    "FPN": Network(),  # segmentation head upsampling 2**(depth-3): output at input resolution
    "PSPNet": Network(depth=3),  # segmentation head upsampling 2**depth
    "PAN": Network(takes_channels="int", channels=32, max_stride=16, min_features=8, dilated=True),
    "DeepLabV3": Network(takes_channels="int", channels=256, max_stride=8, dilated=True),
    "DeepLabV3Plus": Network(takes_channels="int", channels=256, max_stride=16, dilated=True),
    "UPerNet": Network(takes_channels="int", channels=256),
    "Segformer": Network(),
    "DPT": Network(depth=4, depths=(4,), timm_only=True),  # smp's decoder has 4 stages
}
# smp encoders whose downsampling is pooling, so they cannot run dilated (DeepLabV3, DeepLabV3Plus, PAN)
UNDILATABLE = ("vgg", "densenet", "xception", "inceptionv4", "inceptionresnetv2")
# timm plain ViTs (every feature at one scale): smp builds them under DPT only
VIT_PREFIXES = ("vit_", "deit", "beit", "eva", "flexivit", "samvit", "naflexvit")


def network_of(arch: str) -> tuple[str, Network] | None:
    """(smp's spelling, :class:`Network`) of ``arch`` (any case, as smp accepts), or None."""
    for name, network in NETWORKS.items():
        if name.lower() == str(arch).lower():
            return name, network
    return None


HUB_PREFIX = "tu-hf-hub:"  # a timm model on the Hugging Face hub: tu-hf-hub:ORG/NAME (e.g. MahmoodLab/UNI2-h)
# the ViT patch size of the pathology foundation models (docs/how-to/foundation-encoders.md), for the dry run
# of a hub encoder whose config.json is not cached yet (gated repositories are not readable without a token)
HUB_PATCH = {
    "MahmoodLab/UNI": 16,
    "MahmoodLab/UNI2-h": 14,
    "paige-ai/Virchow2": 14,
    "bioptimus/H-optimus-0": 14,
    "bioptimus/H-optimus-1": 14,
    "prov-gigapath/prov-gigapath": 16,  # the architecture's name says 14; its model_args say 16
}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")  # `train.encoder_weights` naming a local file


def is_weights_file(encoder_weights: str | None) -> bool:
    """Whether ``train.encoder_weights`` names a local file (a path or a weights suffix), not named weights
    such as ``imagenet``."""
    value = str(encoder_weights or "")
    return bool(value) and (value.lower().endswith(WEIGHT_SUFFIXES) or "/" in value or value.startswith("~"))


def hub_config(encoder: str) -> dict | None:
    """The timm ``config.json`` of a ``tu-hf-hub:`` encoder when the Hugging Face cache holds it (no download),
    else None."""
    if not encoder.startswith(HUB_PREFIX):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of timm
        return None
    repo, _, revision = encoder[len(HUB_PREFIX) :].partition("@")
    try:
        path = try_to_load_from_cache(repo, "config.json", revision=revision or None)
    except ValueError:  # not a valid repository id: the build names it
        return None
    if not isinstance(path, str):
        return None
    import json

    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def vit_patch(encoder: str, encoder_kwargs: Mapping[str, Any] | None = None) -> int | None:
    """The patch size of a timm plain-ViT encoder (``tu-vit_small_patch16_224`` -> 16; ``encoder_kwargs``'
    ``patch_size`` first), None for other encoders.  A ``tu-hf-hub:`` encoder is read from its cached config;
    uncached, it counts as a ViT (the pathology foundation models are) with its :data:`HUB_PATCH` (else 16)."""
    kwargs = dict(encoder_kwargs or {})
    if encoder.startswith(HUB_PREFIX):
        config = hub_config(encoder) or {}
        kwargs = {**config.get("model_args", {}), **kwargs}
        architecture = config.get("architecture") or config.get("pretrained_cfg", {}).get("architecture")
        if architecture is None:
            known = HUB_PATCH.get(encoder[len(HUB_PREFIX) :].partition("@")[0], 16)
            return int(kwargs.get("patch_size", known))
        encoder = "tu-" + str(architecture)
    if not encoder.startswith("tu-") or not encoder[3:].startswith(VIT_PREFIXES):
        return None
    if kwargs.get("patch_size"):
        return int(kwargs["patch_size"])
    found = re.search(r"patch(\d+)", encoder)
    return int(found.group(1)) if found else 16


def network_settings(
    arch: str, encoder_depth: int | None = None, decoder_channels: Sequence[int] | None = None
) -> dict[str, Any]:
    """smp keyword arguments of ``arch`` for ``train.encoder_depth``/``train.decoder_channels`` (None: the
    architecture's default, :data:`NETWORKS`): ``encoder_depth``, ``decoder_channels`` (a list, an int, or
    absent) and, for FPN and PSPNet, the ``upsampling`` that brings the output to input resolution."""
    found = network_of(arch)
    if found is None:
        return {} if encoder_depth is None else {"encoder_depth": encoder_depth}
    name, network = found
    depth = network.depth_for(encoder_depth)
    kwargs: dict[str, Any] = {"encoder_depth": depth}
    if network.takes_channels == "list":
        kwargs["decoder_channels"] = list(UNET_CHANNELS[-depth:] if decoder_channels is None else decoder_channels)
    elif network.takes_channels == "int":
        kwargs["decoder_channels"] = network.channels if decoder_channels is None else int(list(decoder_channels)[0])
    if name == "FPN":
        kwargs["upsampling"] = 2 ** (depth - 3)
    elif name == "PSPNet":
        kwargs["upsampling"] = 2**depth
    return kwargs


def resolve_network(
    arch: str, encoder_depth: int | None = None, decoder_channels: Sequence[int] | None = None
) -> tuple[int | None, list[int] | None]:
    """(encoder_depth, decoder_channels) that ``arch`` is built with, None resolved to its defaults, in config
    form (``decoder_channels``: a list, ``[n]`` for one-number architectures, None where not taken): what a
    checkpoint records, so that it rebuilds the same network whatever the defaults become."""
    kwargs = network_settings(arch, encoder_depth, decoder_channels)
    channels = kwargs.get("decoder_channels")
    if isinstance(channels, int):
        channels = [channels]
    return kwargs.get("encoder_depth", encoder_depth), channels


def input_multiple(
    arch: str, encoder: str, encoder_depth: int | None = None, encoder_kwargs: Mapping[str, Any] | None = None
) -> tuple[int, int]:
    """(multiple, minimum): the input sides ``arch`` with ``encoder`` at ``encoder_depth`` accepts."""
    found = network_of(arch)
    if found is None:
        return 1, 1
    name, network = found
    depth = network.depth_for(encoder_depth)
    stride = min(2**depth, network.max_stride)
    if network.timm_only:  # DPT: a ViT's patches tile the input, and its decoder's 1/32 scale does too
        stride = math.lcm(32, vit_patch(encoder, encoder_kwargs) or 32)  # patch 16: 32; patch 14: 224
    return (stride if network.divisible else 1), stride * network.min_features


def encoder_problems(train: Mapping) -> list[str]:
    """Problems of config ``train``'s pretrained-encoder settings that show before anything is built: a
    weights file that is missing or of an unknown kind, a malformed hub name, ``unfreeze_blocks`` alone."""
    problems = []
    weights, encoder = train.get("encoder_weights"), str(train.get("encoder", ""))
    if is_weights_file(weights):
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            problems.append(f"`train.encoder_weights`: {path}: no such weights file")
        elif not path.name.lower().endswith(WEIGHT_SUFFIXES):
            problems.append(
                f"`train.encoder_weights`: {path}: not a weights file ({', '.join(WEIGHT_SUFFIXES)}); "
                "named weights such as imagenet have no folder part"
            )
    if encoder.startswith(HUB_PREFIX) and not re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w.-]+)?", encoder[len(HUB_PREFIX) :]):
        problems.append(
            f"`train.encoder` {encoder!r}: write a hub model as {HUB_PREFIX}ORG/NAME (e.g. MahmoodLab/UNI2-h)"
        )
    if train.get("encoder_kwargs") and not encoder.startswith("tu-"):
        problems.append(f"`train.encoder_kwargs` are timm keyword arguments: `train.encoder` {encoder!r} is not tu-")
    if int(train.get("unfreeze_blocks") or 0) and not train.get("freeze_encoder"):
        problems.append("`train.unfreeze_blocks` only applies with `train.freeze_encoder: true`: set both, or 0")
    return problems


def network_problems(train: Mapping, sizes: Mapping[str, int] | None = None) -> list[str]:
    """Problems of the network that config ``train`` describes, one line each naming the keys: an encoder the
    architecture cannot use, an ``encoder_depth`` it does not build with, ``decoder_channels`` of the wrong
    form, input sides (``sizes``: config key -> side, e.g. ``patches.size``) it does not accept, a weights file
    that is not there, and ``unfreeze_blocks`` without ``freeze_encoder``."""
    problems = encoder_problems(train)
    found = network_of(train.get("arch", ""))
    if found is None:
        return problems  # plan_problems names the unknown architecture
    name, network = found
    encoder, depth = str(train.get("encoder", "")), train.get("encoder_depth")
    encoder_kwargs = train.get("encoder_kwargs") or {}
    channels = train.get("decoder_channels")
    if network.timm_only and not encoder.startswith("tu-"):
        problems.append(
            f"`train.arch` {name} takes timm encoders only: `train.encoder` is {encoder!r}, "
            "use `tu-<timm name>` (e.g. tu-vit_small_patch16_224, tu-resnet50)"
        )
    elif vit_patch(encoder, encoder_kwargs) and not network.timm_only:
        problems.append(
            f"`train.encoder` {encoder!r} is a plain ViT (one feature scale), which smp builds under "
            f"`train.arch: DPT` only, not {name}: choose DPT or a hierarchical encoder (e.g. mit_b0, tu-convnext_tiny)"
        )
    if network.dilated and encoder.startswith(UNDILATABLE):
        problems.append(
            f"`train.encoder` {encoder!r} cannot run dilated, as `train.arch` {name} needs "
            "(vgg, densenet, xception and inception encoders downsample by pooling): choose e.g. resnet34"
        )
    if encoder.startswith("mit_b") and name in ("UnetPlusPlus", "Linknet"):
        problems.append(f"`train.encoder` {encoder!r} is not supported by `train.arch` {name} (smp refuses it)")
    if depth is not None and int(depth) not in network.depths:
        allowed = " or ".join(map(str, network.depths))
        problems.append(
            f"`train.encoder_depth` is {depth}, but `train.arch` {name} builds with {allowed} "
            f"(null: its default, {network.depth})"
        )
    elif encoder.startswith("mit_b") and name == "FPN" and depth is not None and int(depth) != 5:
        problems.append(
            f"`train.encoder_depth` is {depth}, but `train.arch` FPN with `train.encoder` {encoder!r} builds with 5 only"
        )
    resolved = network.depth_for(depth)
    if channels is not None:
        channels = list(channels)
        if network.takes_channels is None:
            problems.append(f"`train.decoder_channels` ({channels}) is not used by `train.arch` {name}: set it to null")
        elif network.takes_channels == "int" and len(channels) != 1:
            problems.append(
                f"`train.decoder_channels` is {channels}, but `train.arch` {name} takes one number, "
                f"e.g. [{network.channels}] (null: {network.channels})"
            )
        elif network.takes_channels == "list" and len(channels) != resolved:
            problems.append(
                f"`train.decoder_channels` has {len(channels)} numbers ({channels}), `train.encoder_depth` "
                f"({resolved}) needs one per encoder stage, e.g. {list(UNET_CHANNELS[-resolved:])} (null: that)"
            )
    if not problems:
        multiple, minimum = input_multiple(name, encoder, resolved, encoder_kwargs)
        for key, side in (sizes or {}).items():
            if side % multiple or side < minimum:
                need = f"a multiple of {multiple}" + (f" and at least {minimum}" if minimum > multiple else "")
                problems.append(
                    f"`{key}` ({side}) must be {need} for `train.arch` {name} with `train.encoder` {encoder!r} "
                    f"at `train.encoder_depth` {resolved}"
                )
    return problems
