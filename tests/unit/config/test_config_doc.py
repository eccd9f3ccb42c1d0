"""config/README.md explains every key of the config schema, and is generated from it."""

from __future__ import annotations

import yaml
from support.paths import ROOT

from wsiseg.config.doc import SCHEMA, render


def _keys(schema: dict, prefix: str = ""):
    for name, spec in schema.get("properties", {}).items():
        yield f"{prefix}{name}", spec
        if spec.get("type") == "object":
            yield from _keys(spec, f"{prefix}{name}.")


def test_every_config_key_is_described():
    schema = yaml.safe_load(SCHEMA.read_text())
    missing = [key for key, spec in _keys(schema) if not spec.get("description") and spec.get("type") != "object"]
    assert not missing, f"schema keys without a description: {missing}"


def test_config_readme_is_generated_from_the_schema():
    """Regenerate with `python -m wsiseg.config.doc > config/README.md` after editing the schema."""
    schema = yaml.safe_load(SCHEMA.read_text())
    text = (ROOT / "config" / "README.md").read_text()
    assert text == render(schema), "config/README.md is out of date: python -m wsiseg.config.doc > config/README.md"
    for key, spec in _keys(schema):
        if spec.get("type") != "object":
            assert f"`{key}`" in text


def test_every_key_of_the_default_config_is_documented():
    schema = yaml.safe_load(SCHEMA.read_text())
    documented = {key for key, _ in _keys(schema)}
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    used = {
        f"{k}.{kk}" if isinstance(v, dict) else k
        for k, v in config.items()
        for kk in (v if isinstance(v, dict) else [None])
    }
    assert used <= documented, sorted(used - documented)
