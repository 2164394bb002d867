"""tokenize: punctuation and symbols go, letters with diacritics stay."""

from __future__ import annotations

import unicodedata

from captioner.data.text import tokenize


def test_vietnamese_keeps_diacritics() -> None:
    words = tokenize("Một người đàn ông đang đi xe đạp.")
    assert words == ["một", "người", "đàn", "ông", "đang", "đi", "xe", "đạp"]


def test_decomposed_input_is_composed() -> None:
    decomposed = unicodedata.normalize("NFD", "Người đạp xe")
    assert tokenize(decomposed) == ["người", "đạp", "xe"]


def test_punctuation_and_symbols_become_spaces() -> None:
    text = 'A dog, "jumping" over the tri-colored fence... ($5 + 10%) — wow!'
    assert tokenize(text) == [
        "a",
        "dog",
        "jumping",
        "over",
        "the",
        "tri",
        "colored",
        "fence",
        "5",
        "10",
        "wow",
    ]


def test_whitespace_and_empty() -> None:
    assert tokenize("  Two\tdogs \n play  ") == ["two", "dogs", "play"]
    assert tokenize("") == []
    assert tokenize(" .,!? ") == []


def test_special_token_brackets_are_symbols() -> None:
    assert tokenize("<unk> <pad>") == ["unk", "pad"]
