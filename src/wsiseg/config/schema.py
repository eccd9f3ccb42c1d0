"""Plain-value parameter sets: built from config mappings or from CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

from wsiseg.errors import ConfigError

P = TypeVar("P")

SCHEMA = Path(__file__).with_name("config.schema.yaml")  # package data; workflow/schemas/ links to it


@functools.lru_cache(maxsize=None)
def _top_level() -> dict[str, dict]:
    """Top-level keys of the config schema, read once ({} when the schema is not installed), with libyaml's
    parser where PyYAML has it (the pure-Python one takes most of ``wsiseg STAGE --help``'s time)."""
    if not SCHEMA.is_file():
        return {}
    return yaml.load(SCHEMA.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["properties"]


def schema_section(section: str) -> dict[str, dict]:
    """The config schema's properties of ``section`` (e.g. ``predict``): the one place where
    each option's meaning, type and default are written."""
    return _top_level().get(section, {}).get("properties", {})


def _help(section: str | None, name: str, default: Any) -> str:
    """Help text of option ``name``: the schema's description and the default."""
    spec = (schema_section(section).get(name) or _top_level().get(name, {})) if section else {}
    text = " ".join(str(spec.get("description", "")).split())
    shown = json.dumps(default) if isinstance(default, (dict, list, tuple)) else default
    return f"{text} (default: {shown})".replace("%", "%%").strip()


def from_mapping(cls: type[P], mapping: Mapping[str, Any], section: str) -> P:
    """Build dataclass ``cls`` from a config ``mapping``; unknown keys are an error naming ``section``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ConfigError(f"config section '{section}': unknown key(s) {unknown}; known: {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in mapping.items()}
    return cls(**values)


def _is_mapping(hint) -> bool:
    """Whether a field's type hint is a dict (possibly in a union)."""
    return any(typing.get_origin(h) is dict or h is dict for h in (hint, *typing.get_args(hint)))


def parse_pairs(items: list[str] | None) -> dict[str, Any] | None:
    """CLI ``name=value`` words as a mapping; values are YAML (``0.5``, ``{p: 0.3}``), a bare name maps to None."""
    if items is None:
        return None
    pairs = (item.split("=", 1) if "=" in item else (item, None) for item in items)
    return {name: None if value is None else yaml.safe_load(value) for name, value in pairs}


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (calling its default factory)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _scalar(hint) -> tuple[type, bool]:
    """(element type, is_sequence) of a field's type hint, ignoring None."""
    if typing.get_origin(hint) in (tuple, list):
        return typing.get_args(hint)[0], True
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if len(args) == 1 and typing.get_origin(args[0]) in (tuple, list):
        return typing.get_args(args[0])[0], True
    if len(args) == 1 and args[0] in (int, float, str, bool):
        return args[0], False
    return str, False  # unions such as int | str: keep the text


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), section: str | None = None
) -> None:
    """Add one ``--flag`` per field of dataclass ``cls``: default and type from the class; help, choices (``enum``)
    and fixed list lengths (``minItems`` = ``maxItems``) from config section ``section`` of the schema.

    Mapping fields take ``name=value`` words (``--loss dice=1 bce=0.5``)."""
    hints = typing.get_type_hints(cls)
    specs = schema_section(section) if section else {}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            continue
        kind, many = _scalar(hints[f.name])
        spec = specs.get(f.name, {})
        flag = "--" + f.name.replace("_", "-")
        default = _default(f)
        text = _help(section, f.name, default)
        if _is_mapping(hints[f.name]):
            parser.add_argument(flag, nargs="+", default=None, metavar="NAME=VALUE", help=text)
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            count = spec.get("minItems")
            options: dict[str, Any] = {"type": kind, "default": default, "help": text}
            if many:
                options["nargs"] = count if count and count == spec.get("maxItems") else "+"
            choices = [c for c in spec.get("enum", ()) if c is not None]
            if choices:
                options["choices"] = choices
            else:
                options["metavar"] = kind.__name__.upper()
            parser.add_argument(flag, **options)


def from_args(cls: type[P], args: argparse.Namespace, skip: tuple[str, ...] = ()) -> P:
    """Build dataclass ``cls`` from parsed CLI flags added by :func:`add_arguments`."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if _is_mapping(hints[f.name]):
            value = _default(f) if value is None else parse_pairs(value)
        values[f.name] = value
    return from_mapping(cls, values, "command line")
