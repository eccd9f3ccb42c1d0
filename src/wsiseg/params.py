"""Plain-value parameter sets: built from config mappings or from CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Mapping, TypeVar

import yaml

P = TypeVar("P")


def from_mapping(cls: type[P], mapping: Mapping[str, Any], section: str) -> P:
    """Build dataclass ``cls`` from a config ``mapping``; unknown keys are an error naming ``section``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ValueError(f"config section '{section}': unknown key(s) {unknown}; known: {sorted(names)}")
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


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per field of dataclass ``cls`` (defaults and types from the class).

    Mapping fields take ``name=value`` words (``--loss dice=1 bce=0.5``)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            continue
        kind, many = _scalar(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = _default(f)
        if _is_mapping(hints[f.name]):
            parser.add_argument(flag, nargs="+", default=None, metavar="NAME=VALUE", help=f"(default: {default})")
        elif kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=kind, nargs="+" if many else None, default=default, metavar=kind.__name__.upper(), help=f"(default: {default})")


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
