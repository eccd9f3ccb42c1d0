"""config/README.md from the config schema: every key, its type, default and meaning.

Regenerate after editing ``workflow/schemas/config.schema.yaml``::

    python -m wsiseg.config.doc > config/README.md

(a test fails while the two disagree).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from wsiseg.config.schema import SCHEMA

INTRO = """\
# Configuring wsiseg

`config/config.yaml` is the default configuration: it runs the embedded synthetic
demo end to end (`snakemake --cores N`). To run your own slides:

1. write a sample sheet (CSV) with columns `slide_id,image,mask,split` (`split` is
   `train`, `val` or `test`; `mask` may be empty for unlabelled slides; optional
   `group`), or let `wsiseg samples --format FORMAT ROOT > samples.csv` write it for a
   dataset in its download layout;
2. in `config/config.yaml` set `demo.enabled: false` and `samples: samples.csv`;
3. adjust the keys below, then `snakemake -n` (checks everything in seconds) and
   `snakemake --cores N`.

An overlay file changes only what it lists: `snakemake --configfile config/examples/dsb2018.yaml`
(one example per dataset layout in `config/examples/`). A misspelt key stops the run
before anything starts, naming the file and the closest valid key. Editing a key reruns
only the stages that use it (e.g. `predict.threshold` reruns predict and report).

This file is generated from `workflow/schemas/config.schema.yaml`
(`python -m wsiseg.config.doc > config/README.md`).
"""


def _type(spec: Mapping[str, Any]) -> str:
    if "anyOf" in spec:  # e.g. a count or "auto"
        return " or ".join(_type(alternative) for alternative in spec["anyOf"])
    kind = spec.get("type", "")
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    text = " or ".join(str(k) for k in kinds)
    choices = spec.get("enum") or (spec.get("items") or {}).get("enum") or (spec.get("propertyNames") or {}).get("enum")
    if choices:
        text += ": " + ", ".join(f"`{json.dumps(c) if c is None else c}`" for c in choices)
    return text


def _default(spec: Mapping[str, Any]) -> str:
    if "default" not in spec:
        return "required" if spec.get("_required") else ""
    return f"`{json.dumps(spec['default'])}`"


def _text(spec: Mapping[str, Any]) -> str:
    parts = [" ".join(str(spec.get("description", "")).split())]
    bounds = [
        f"{name} {spec[key]}"
        for key, name in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"))
        if key in spec
    ]
    if bounds:
        parts.append(f"({', '.join(bounds)})")
    return " ".join(p for p in parts if p).replace("|", "\\|")


def _rows(properties: Mapping[str, Any], prefix: str, required: set[str]) -> Iterator[str]:
    for name, spec in properties.items():
        spec = {**spec, "_required": name in required}
        yield f"| `{prefix}{name}` | {_type(spec)} | {_default(spec)} | {_text(spec)} |"


def render(schema: Mapping[str, Any]) -> str:
    """Markdown: the intro, then one table of top-level keys and one per section."""
    required = set(schema.get("required", []))
    top = {k: v for k, v in schema["properties"].items() if v.get("type") != "object"}
    sections = {k: v for k, v in schema["properties"].items() if v.get("type") == "object"}
    header = "| key | type | default | meaning |\n| --- | --- | --- | --- |"
    lines = [INTRO, "## Top-level keys", "", header, *_rows(top, "", required), ""]
    for name, spec in sections.items():
        lines += [f"## `{name}`", ""]
        if spec.get("description"):
            lines += [" ".join(spec["description"].split()), ""]
        lines += [header, *_rows(spec.get("properties", {}), f"{name}.", set(spec.get("required", []))), ""]
    return "\n".join(lines)


def main() -> None:
    """Print config/README.md for the schema given as argument (default: the repository's)."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA
    sys.stdout.write(render(yaml.safe_load(path.read_text())))


if __name__ == "__main__":
    main()
