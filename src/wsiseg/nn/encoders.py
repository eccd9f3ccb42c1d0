"""Pretrained encoders: timm hub names, weights from the hub, an offline cache or a file, and the input
normalisation that belongs to the weights.

:func:`resolve_encoder` turns config ``train.encoder``/``encoder_weights``/``encoder_kwargs``/``normalize``
into an :class:`EncoderSpec`: the plain timm architecture and keyword arguments smp builds (a
``tu-hf-hub:ORG/NAME`` encoder is read from its hub ``config.json`` once, at training, so that a checkpoint
rebuilds without the hub), the weights wsiseg loads itself (a hub snapshot or a local file, checked key by key
by :func:`load_encoder_weights`), where they came from (hub revision or file sha256, for the model card), and
the mean/std the weights were trained with.
"""

from __future__ import annotations

import functools
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from wsiseg.config.networks import HUB_PREFIX, is_weights_file
from wsiseg.errors import ConfigError
from wsiseg.modelcard import file_sha256

log = logging.getLogger(__name__)

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# state-dict keys of classification heads: a foundation model's file has none, a timm model builds one
HEAD_PREFIXES = ("head.", "fc.", "classifier.", "last_linear.", "head_drop.")
# wrappers a training framework puts around a state dict, and prefixes it puts before the keys
WRAPPER_KEYS = ("state_dict", "model", "module", "teacher")
KEY_PREFIXES = ("module.", "model.", "encoder.", "backbone.", "trunk.")
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class EncoderSpec:
    """How to build and initialise one encoder (see :func:`resolve_encoder`)."""

    name: str  # the encoder smp builds: a smp name or tu-<timm architecture>
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm keyword arguments, in config form
    smp_weights: str | None = None  # weights smp/timm load themselves (e.g. imagenet), None otherwise
    weights_file: Path | None = None  # weights wsiseg loads into the encoder once built
    source: dict[str, Any] = field(default_factory=dict)  # where the weights came from (model card)
    normalize: dict[str, list[float]] = field(default_factory=lambda: dict(IMAGENET))  # RGB mean/std, 0-1


def _hub_error(repo: str, filename: str, err: Exception) -> ConfigError:
    """One line for a hub download that failed: gated, unknown, or not cached while offline."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    where = f"`train.encoder` {HUB_PREFIX}{repo}"
    if isinstance(err, GatedRepoError):
        return ConfigError(
            f"{where} is a gated model: accept its licence at https://huggingface.co/{repo} with your account, "
            "then set HF_TOKEN=<an access token> (or run `hf auth login`) before training"
        )
    if isinstance(err, RepositoryNotFoundError):
        return ConfigError(
            f"{where}: no such repository on the Hugging Face hub (or a private one: set HF_TOKEN=<an access token>)"
        )
    if isinstance(err, LocalEntryNotFoundError):
        offline = " (HF_HUB_OFFLINE is set)" if constants.is_offline_mode() else " and the hub cannot be reached"
        return ConfigError(
            f"{where}: {filename} is not in the Hugging Face cache {constants.HF_HUB_CACHE}{offline}: run "
            f"`hf download {repo}` where the network is and copy the cache (HF_HOME), or set "
            "`train.encoder_weights` to a local weights file"
        )
    reason = " ".join(str(err).split())[:200]
    return ConfigError(f"{where}: {filename} could not be fetched from the Hugging Face hub: {reason}")


def hub_file(repo: str, filename: str) -> Path | None:
    """``filename`` of hub repository ``repo`` (``ORG/NAME`` or ``ORG/NAME@revision``) from the Hugging Face
    cache or the hub (``HF_HUB_OFFLINE=1``: the cache only); None when the repository has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = repo.partition("@")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None))
    except LocalEntryNotFoundError as err:
        raise _hub_error(repo, filename, err) from None
    except EntryNotFoundError:
        return None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise _hub_error(repo, filename, err) from None


def hub_revision(path: Path) -> str | None:
    """The commit a file in the Hugging Face cache was downloaded at (``.../snapshots/<commit>/file``)."""
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def _timm_normalize(name: str) -> dict[str, list[float]] | None:
    """timm's pretrained mean/std for a timm model name (with optional ``.tag``), None when it has none."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False) if timm.is_model(name) else None
    if cfg is None or cfg.mean is None or cfg.std is None:
        return None
    return {"mean": [float(v) for v in cfg.mean], "std": [float(v) for v in cfg.std]}


def _smp_normalize(encoder: str, weights: str) -> dict[str, list[float]] | None:
    """smp's mean/std for a smp encoder's named weights (e.g. resnet34 imagenet)."""
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders.get(encoder, {}).get("pretrained_settings", {}).get(weights, {})
    if "mean" not in settings or "std" not in settings:
        return None
    return {"mean": [float(v) for v in settings["mean"]], "std": [float(v) for v in settings["std"]]}


def _checked_normalize(normalize: Mapping[str, Any]) -> dict[str, list[float]]:
    """``train.normalize`` as two lists of three floats in 0-1 units, or one ConfigError line."""
    try:
        out = {k: [float(v) for v in normalize[k]] for k in ("mean", "std")}
    except (KeyError, TypeError, ValueError):
        raise ConfigError(
            f"`train.normalize` is {dict(normalize)!r}: give {{mean: [r, g, b], std: [r, g, b]}}"
        ) from None
    if any(len(v) != 3 for v in out.values()) or min(out["std"]) <= 0 or max(out["mean"] + out["std"]) > 1:
        raise ConfigError(
            f"`train.normalize` is {out}: three values each, in 0-1 units of an 8-bit channel (e.g. ImageNet's "
            "mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225]), std > 0"
        )
    return out


def resolve_encoder(
    encoder: str,
    encoder_weights: str | None = None,
    encoder_kwargs: Mapping[str, Any] | None = None,
    normalize: Mapping[str, Any] | None = None,
) -> EncoderSpec:
    """The :class:`EncoderSpec` of config ``train``'s encoder settings.

    ``encoder_weights``: None (random initialisation), a path to a ``.safetensors``/``.bin``/``.pth`` file
    (loaded into the encoder, key by key), or any other value: the encoder's own pretrained weights (smp's
    named weights such as ``imagenet``; timm's default for ``tu-`` names; the hub snapshot for
    ``tu-hf-hub:`` names).  ``normalize`` ({mean, std}, 0-1) overrides the mean/std that go with the
    weights: the hub config's, timm's or smp's pretrained settings, ImageNet's when there are none."""
    kwargs = dict(encoder_kwargs or {})
    name, smp_weights, weights_file, source, found = encoder, None, None, {"weights": None}, None
    if is_weights_file(encoder_weights):
        weights_file = Path(str(encoder_weights)).expanduser()
        if not weights_file.is_file():
            raise ConfigError(f"`train.encoder_weights`: {weights_file}: no such weights file")
        source = {"weights": "file", "path": str(weights_file), "sha256": file_sha256(weights_file)}
    if encoder.startswith(HUB_PREFIX):
        from timm.models._hub import load_cfg_from_json

        repo = encoder[len(HUB_PREFIX) :]
        config = hub_file(repo, "config.json")
        if config is None:
            raise ConfigError(f"`train.encoder` {encoder}: the hub repository has no timm config.json")
        cfg = load_cfg_from_json(config)
        pretrained = cfg.get("pretrained_cfg", cfg)
        name = "tu-" + str(cfg.get("architecture", pretrained.get("architecture")))
        kwargs = {**cfg.get("model_args", {}), **kwargs}
        if "img_size" not in kwargs and pretrained.get("input_size"):  # the size its position embedding is for
            kwargs["img_size"] = int(pretrained["input_size"][-1])  # (timm's entrypoint default may differ: 518)
        if pretrained.get("mean") and pretrained.get("std"):
            found = {"mean": [float(v) for v in pretrained["mean"]], "std": [float(v) for v in pretrained["std"]]}
        if encoder_weights is not None and weights_file is None:
            weights_file = next(filter(None, (hub_file(repo, f) for f in HUB_WEIGHTS)), None)
            if weights_file is None:
                raise ConfigError(f"`train.encoder` {encoder}: the hub repository has no {' or '.join(HUB_WEIGHTS)}")
            source = {"weights": "hub", "repo": repo, "revision": hub_revision(weights_file), "file": weights_file.name}
    elif encoder_weights is not None and weights_file is None:
        smp_weights = str(encoder_weights)
        source = {"weights": smp_weights, "via": "timm" if encoder.startswith("tu-") else "smp"}
    if encoder_weights is not None and found is None:
        found = _timm_normalize(name[3:]) if name.startswith("tu-") else _smp_normalize(name, smp_weights or "imagenet")
    if normalize:
        chosen, origin = _checked_normalize(normalize), "train.normalize"
    elif found:
        chosen, origin = found, "the pretrained weights' config"
    else:
        chosen, origin = dict(IMAGENET), "ImageNet's (the default)"
        if weights_file is not None:
            log.warning(
                "train: %s: no mean/std known for these weights, normalising with ImageNet's; set "
                "`train.normalize` to the values the weights were trained with",
                weights_file,
            )
    source["normalize_from"] = origin
    return EncoderSpec(name, kwargs, smp_weights, weights_file, source, chosen)


def timm_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Config-form timm keyword arguments for ``timm.create_model``: a ``*_layer`` value naming a class of
    ``timm.layers`` or ``torch.nn`` (``mlp_layer: SwiGLUPacked``, ``act_layer: SiLU``) becomes that class;
    lower-case names (``act_layer: silu``) stay strings, which timm resolves itself."""
    import timm.layers

    out = dict(kwargs)
    for key, value in kwargs.items():
        if key.endswith("_layer") and isinstance(value, str):
            cls = getattr(timm.layers, value, None) or getattr(nn, value, None)
            if isinstance(cls, type) or isinstance(cls, functools.partial):  # SwiGLUPacked is a partial
                out[key] = cls
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a ``torch.save`` file (tensors only: nothing runs), unwrapped
    from a training framework's ``{"state_dict": ...}``-style container."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            f"`train.encoder_weights`: {path}: refused: holds Python objects besides tensors (could run code); "
            "save the state dict alone (torch.save(model.state_dict(), ...)) or as .safetensors"
        ) from None
    except Exception as err:  # safetensors and torch raise their own types for a damaged file
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise ConfigError(f"`train.encoder_weights`: {path}: not a readable weights file ({reason})") from None
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict) and len(state) <= 4:
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"`train.encoder_weights`: {path}: not a state dict of tensors")
    return state


def encoder_module(net: nn.Module) -> nn.Module:
    """The module whose state dict a weights file holds: the timm model inside a ViT encoder (DPT), else the
    encoder."""
    from segmentation_models_pytorch.encoders.timm_vit import TimmViTEncoder

    return net.encoder.model if isinstance(net.encoder, TimmViTEncoder) else net.encoder


def _fit_keys(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under the target's key names: a common wrapper prefix dropped, timm's feature-extractor
    flattening (``stages.0.`` -> ``stages_0.``) followed."""
    for prefix in KEY_PREFIXES:
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    out = {}
    for key, value in state.items():
        flat = re.sub(r"^([A-Za-z]+)\.(\d+)\.", r"\1_\2.", key)
        out[flat if key not in own and flat in own else key] = value
    return out


def _first(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_encoder_weights(net: nn.Module, path: Path, encoder: str) -> None:
    """Load the weights file ``path`` into ``net``'s encoder, or stop with one line naming the file and the
    first keys that do not fit.  Classification-head keys are ignored on both sides (a foundation model has
    none; a timm model builds one); every other key must be present with the encoder's shape."""
    target = encoder_module(net)
    own = target.state_dict()
    state = _fit_keys(read_state_dict(path), own)
    skip = lambda k: k.startswith(HEAD_PREFIXES) or k.endswith("num_batches_tracked")  # noqa: E731
    unexpected = [k for k in state if k not in own and not skip(k)]
    missing = [k for k in own if k not in state and not skip(k)]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if unexpected or missing or shapes:
        parts = [
            f"{label} {len(keys)}: {_first(keys)}"
            for label, keys in (("wrong shape", shapes), ("missing", missing), ("not in the encoder", unexpected))
            if keys
        ]
        raise ConfigError(
            f"`train.encoder_weights`: {path} does not fit `train.encoder` {encoder!r}: " + "; ".join(parts)
        )
    target.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    log.info("train: encoder weights loaded from %s (%d tensors)", path, len(state))


BLOCK = re.compile(r"^(.*?(?:blocks|stages|layers|layer)[._]?\d+)\.")


def encoder_blocks(encoder: nn.Module, side: int | None = None) -> list[str]:
    """Module paths of an encoder's blocks in forward order (``model.blocks.11``, ``layer4``, ``stages_3``):
    what ``train.unfreeze_blocks`` counts from the end.  With ``side``, only the blocks a forward pass of a
    ``side``-pixel image runs through (smp keeps a ResNet's layer4 at encoder_depth 3, unused)."""
    paths: list[str] = []
    for name, _ in encoder.named_parameters():
        found = BLOCK.match(name)
        if found and found.group(1) not in paths:
            paths.append(found.group(1))
    if side is None or not paths:
        return paths
    ran: set[str] = set()
    hooks = [
        encoder.get_submodule(p).register_forward_hook(lambda *_, path=p: ran.add(path))  # noqa: B023
        for p in paths
    ]
    try:
        with torch.no_grad():
            encoder(torch.zeros(1, 3, side, side, device=next(encoder.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return [p for p in paths if p in ran]


def freeze(encoder: nn.Module, unfreeze_blocks: int = 0, side: int | None = None) -> list[str]:
    """Freeze ``encoder`` but its last ``unfreeze_blocks`` blocks that run on ``side``-pixel inputs (with the
    parameters after them, e.g. a ViT's final norm); returns the module paths that still learn."""
    encoder.requires_grad_(False)
    if unfreeze_blocks <= 0:
        return []
    blocks = encoder_blocks(encoder, side)
    if unfreeze_blocks > len(blocks):
        raise ConfigError(
            f"`train.unfreeze_blocks` is {unfreeze_blocks}, but the encoder runs {len(blocks)} blocks "
            f"({blocks[0] if blocks else '-'} .. {blocks[-1] if blocks else '-'})"
        )
    learn = blocks[-unfreeze_blocks:]
    after = False
    for name, param in encoder.named_parameters():
        found = BLOCK.match(name)
        if found:
            after = found.group(1) == blocks[-1]
        if (found and found.group(1) in learn) or (not found and after):
            param.requires_grad_(True)
    return learn
