"""From parsed CLI arguments to a settings dataclass: the dataclass owns every default.

Options are declared with ``default=None`` (argparse's "not given"); only the options a user
gave replace the dataclass's defaults, so no default is written twice.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def settings_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """``cls(**given)`` where ``given`` are the fields of ``cls`` set on ``args`` (not None),
    then ``overrides``."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
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
