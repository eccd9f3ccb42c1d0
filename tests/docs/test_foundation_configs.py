"""The foundation-model configs the documentation gives: each passes the config schema and the dry run's
network checks, and its timm arguments build the model the card describes (width and parameter count, on
torch's meta device: no weights, no network)."""

from __future__ import annotations

import re

import pytest
import yaml
from support.paths import ROOT

from wsiseg.config.checks import schema_problem
from wsiseg.config.networks import HUB_PREFIX, network_problems

PAGE = ROOT / "docs" / "how-to" / "foundation-encoders.md"
SCHEMA = yaml.safe_load((ROOT / "src" / "wsiseg" / "config" / "config.schema.yaml").read_text())

# What each hub repository's config.json holds (architecture, model_args): read from the public H-optimus-0
# file; for gated repositories from the code that reproduces them (UNI2-h's card passes every argument)
HUB_CONFIGS = {
    "MahmoodLab/UNI": ("vit_large_patch16_224", {}),  # its arguments sit outside model_args: timm ignores them
    "MahmoodLab/UNI2-h": ("vit_giant_patch14_224", {}),
    "paige-ai/Virchow2": (
        "vit_huge_patch14_224",
        {"img_size": 224, "init_values": 1e-5, "num_classes": 0, "reg_tokens": 4, "mlp_ratio": 5.3375},
    ),
    "bioptimus/H-optimus-0": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224}),  # pretrained_cfg input_size
    "bioptimus/H-optimus-1": ("vit_giant_patch14_reg4_dinov2", {"img_size": 224}),
    "prov-gigapath/prov-gigapath": (
        "vit_giant_patch14_dinov2",
        {"img_size": 224, "patch_size": 16, "embed_dim": 1536, "depth": 40, "num_heads": 24, "init_values": 1e-5},
    ),
}
# (width, parameters in millions) as the cards and papers state them
PUBLISHED = {
    "MahmoodLab/UNI": (1024, 303),
    "MahmoodLab/UNI2-h": (1536, 681),
    "paige-ai/Virchow2": (1280, 632),
    "bioptimus/H-optimus-0": (1536, 1135),
    "bioptimus/H-optimus-1": (1536, 1135),
    "prov-gigapath/prov-gigapath": (1536, 1135),
}


def _blocks(text: str) -> list[dict]:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "tu-hf-hub:" in b]


def _doc_configs() -> list[tuple[str, dict]]:
    found = [(f"docs:{c['train']['encoder']}", c) for c in _blocks(PAGE.read_text())]
    found += [(f"README:{c['train']['encoder']}", c) for c in _blocks((ROOT / "README.md").read_text())]
    return found


def test_the_page_gives_a_config_for_every_model_in_its_table():
    repos = {c["train"]["encoder"][len(HUB_PREFIX) :] for _, c in _doc_configs()}
    assert repos == set(HUB_CONFIGS)


@pytest.mark.parametrize("name,config", _doc_configs(), ids=lambda v: v if isinstance(v, str) else "")
def test_documented_config_passes_the_dry_run_and_builds_the_published_model(name, config):
    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())  # the docs' blocks are overlays on it
    merged = {**base, **{k: {**base.get(k, {}), **v} for k, v in config.items()}}
    assert schema_problem(merged, SCHEMA) is None
    sizes = {"patches.size": config["patches"]["size"], "predict.tile": config.get("predict", {}).get("tile", 512)}
    assert network_problems(config["train"], sizes) == []

    torch = pytest.importorskip("torch")
    import timm

    from wsiseg.nn.encoders import timm_kwargs

    repo = config["train"]["encoder"][len(HUB_PREFIX) :]
    architecture, model_args = HUB_CONFIGS[repo]
    kwargs = timm_kwargs({**model_args, **config["train"].get("encoder_kwargs", {})})
    with torch.device("meta"):
        model = timm.create_model(architecture, **kwargs)
    width, millions = PUBLISHED[repo]
    assert model.embed_dim == width
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, rel=0.01)
    assert model.patch_embed.patch_size[0] == (16 if repo in ("MahmoodLab/UNI", "prov-gigapath/prov-gigapath") else 14)
