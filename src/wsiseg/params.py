"""Plain-value parameter sets: built from config mappings or from CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Mapping, TypeVar

P = TypeVar("P")


def from_mapping(cls: type[P], mapping: Mapping[str, Any], section: str) -> P:
    """Build dataclass ``cls`` from a config ``mapping``; unknown keys are an error naming ``section``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - names)
    if unknown:
        raise ValueError(f"config section '{section}': unknown key(s) {unknown}; known: {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in mapping.items()}
    return cls(**values)


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
    """Add one ``--flag`` per field of dataclass ``cls`` (defaults and types from the class)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            continue
        kind, many = _scalar(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=kind, nargs="+" if many else None, default=default, metavar=kind.__name__.upper(), help=f"(default: {default})")


def from_args(cls: type[P], args: argparse.Namespace, skip: tuple[str, ...] = ()) -> P:
    """Build dataclass ``cls`` from parsed CLI flags added by :func:`add_arguments`."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip and hasattr(args, f.name)}
    return from_mapping(cls, values, "command line")
