"""A tiny randomly initialised ViT standing in for a pathology foundation model: saved in Hugging Face cache
layout (``models--ORG--NAME/snapshots/<commit>/config.json + model.safetensors``, as ``hf download`` leaves
it) and as plain weights files, so that the hub and file code paths run offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPO = "wsiseg-test/tiny-vit"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
ARCHITECTURE = "vit_tiny_patch16_224"
# what the hub config.json holds (JSON: no classes), like UNI2-h's size settings
MODEL_ARGS = {"depth": 4, "embed_dim": 32, "num_heads": 2, "patch_size": 8, "img_size": 64}
# what the user's config adds, like UNI2-h's card: a class by name, an activation, register tokens
KWARGS = {"mlp_layer": "SwiGLUPacked", "act_layer": "silu", "mlp_ratio": 2.0, "reg_tokens": 2, "init_values": 1e-5}
# not ImageNet's (as H-optimus' are not): the test sees it reach training, the checkpoint and predict
MEAN, STD = [0.70, 0.58, 0.70], [0.21, 0.23, 0.18]


def tiny_vit(**overrides) -> torch.nn.Module:
    """The tiny ViT with the foundation-model settings (``overrides`` change them, e.g. ``embed_dim``)."""
    import timm

    from wsiseg.nn.encoders import timm_kwargs

    return timm.create_model(ARCHITECTURE, num_classes=0, **timm_kwargs({**MODEL_ARGS, **KWARGS, **overrides}))


def write_hub_cache(hub_cache: Path, repo: str = REPO, seed: int = 0) -> tuple[Path, dict[str, torch.Tensor]]:
    """A populated Hugging Face hub cache (``HF_HUB_CACHE``, i.e. ``$HF_HOME/hub``) holding ``repo``: returns
    the snapshot folder and the weights saved there."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in tiny_vit().state_dict().items()}
    folder = Path(hub_cache) / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    config = {
        "architecture": ARCHITECTURE,
        "num_classes": 0,
        "num_features": MODEL_ARGS["embed_dim"],
        "model_args": MODEL_ARGS,
        "pretrained_cfg": {"tag": "tiny", "input_size": [3, 64, 64], "mean": MEAN, "std": STD, "num_classes": 0},
    }
    (snapshot / "config.json").write_text(json.dumps(config))
    save_file(state, str(snapshot / "model.safetensors"))
    return snapshot, state


def write_weights_file(path: Path, seed: int = 0, wrap: str | None = None, **overrides) -> dict[str, torch.Tensor]:
    """The tiny ViT's weights as a plain file (``.safetensors``, else ``torch.save``; ``wrap`` puts them
    under that key, as training frameworks do); returns them."""
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in tiny_vit(**overrides).state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({wrap: state} if wrap else state, path)
    return state
