"""From parsed CLI arguments to a settings dataclass: the dataclass owns every default.

Options are declared with ``default=None`` (argparse's "not given"); only the options a user
gave replace the dataclass's defaults, so no default is written twice. ``--set KEY=VALUE``
strings are read by the type each field declares (no round trip through strings for the
typed options).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from captioner.errors import CaptionerError

T = TypeVar("T")


def given_fields(cls: type[Any], args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``cls`` that ``args`` sets (not None); paths become strings where the
    field holds a string."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    return {
        k: str(v) if isinstance(v, Path) and hints[k] is str else v
        for k, v in vars(args).items()
        if k in names and v is not None
    }


def settings_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """``cls(**given)`` where ``given`` are the fields of ``cls`` set on ``args`` (not None),
    then ``overrides``."""
    given = given_fields(cls, args)
    given.update(overrides)
    return cls(**given)


def default_of(cls: type[Any], name: str) -> Any:
    """A field's default, for help texts ("(default: 40)")."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    raise KeyError(name)


def parse_assignments(cls: type[Any], items: list[str]) -> dict[str, Any]:
    """``["dropout=0.3", "tags={a: b}"]`` -> ``{"dropout": 0.3, ...}``, each value read as the
    type the field of ``cls`` declares; a bad key or value is one error naming the item."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        path = key.strip().replace("-", "_").split(".")
        owner, into = cls, values
        for part in path[:-1]:  # "model.dropout": a field of the nested dataclass
            kind = typing.get_type_hints(owner).get(part)
            if kind is None or not dataclasses.is_dataclass(kind):
                raise CaptionerError(f"bad override {item!r}: expected KEY=VALUE with a known KEY")
            owner, into = kind, into.setdefault(part, {})
        hints = typing.get_type_hints(owner)
        name = path[-1]
        if not sep or name not in hints or dataclasses.is_dataclass(hints[name]):
            raise CaptionerError(f"bad override {item!r}: expected KEY=VALUE with a known KEY")
        try:
            into[name] = _read(raw.strip(), hints[name])
        except (ValueError, yaml.YAMLError):
            raise CaptionerError(
                f"bad override {item!r}: {name} expects {_name(hints[name])}"
            ) from None
    return values


def _read(raw: str, kind: Any) -> Any:
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else ()
    if options:  # "int | None" and the like
        if raw.lower() in ("null", "none", "~", "") and type(None) in options:
            return None
        return _read(raw, next(o for o in options if o is not type(None)))
    origin = typing.get_origin(kind) or kind
    if origin is bool:
        value = yaml.safe_load(raw)
        if not isinstance(value, bool):
            raise ValueError(raw)
        return value
    if origin in (int, float, str):
        return origin(raw)
    value = yaml.safe_load(raw)  # dict, list, tuple: YAML
    if not isinstance(value, origin):
        raise ValueError(raw)
    return value


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))
