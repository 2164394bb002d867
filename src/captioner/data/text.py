"""Caption tokenisation that works for any script: words keep their diacritics."""

from __future__ import annotations

import unicodedata
from functools import lru_cache


@lru_cache(maxsize=65536)
def _is_separator(char: str) -> bool:
    """True for Unicode punctuation (P*) and symbols (S*), which become spaces."""
    return unicodedata.category(char)[0] in "PS"


def tokenize(text: str) -> list[str]:
    """NFC-normalise, lower-case, turn punctuation and symbols into spaces, split on spaces."""
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).lower())
    return "".join(" " if _is_separator(c) else c for c in text).split()
