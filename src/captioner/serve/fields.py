"""Request fields read as strictly as the OpenAPI schema states them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator


def strict_bool(value: object) -> object:
    """A boolean form or query field is ``true`` or ``false`` (any case), as the schema says:
    not 0, 1, on or yes, which FastAPI would otherwise accept."""
    if not isinstance(value, str):
        return value
    if value.lower() not in ("true", "false"):
        raise ValueError("must be true or false")
    return value.lower() == "true"


FormBool = Annotated[bool, BeforeValidator(strict_bool)]
QueryBool = FormBool
