"""Word vocabulary: token <-> id mapping, caption encoding, JSON persistence."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from captioner.data.readers import load_json_file
from captioner.data.text import tokenize
from captioner.errors import CaptionerError, DatasetError
from captioner.fileio import atomic_write_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
SPECIALS: tuple[str, ...] = (PAD, START, END, UNK)
FORMAT = "captioner-vocabulary"
VERSION = 1


def _tokens_problem(tokens: Any) -> str | None:
    """Why ``tokens`` is not a valid token list, or None when it is."""
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
        return "'tokens' must be a list of non-empty strings"
    if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
        return f"the first tokens must be the special tokens {list(SPECIALS)}"
    if len(set(tokens)) != len(tokens):
        dupes = sorted(t for t, n in Counter(tokens).items() if n > 1)
        return f"tokens must be unique; repeated: {dupes[:5]}"
    return None


class Vocabulary:
    """Ids 0..3 are <pad>, <start>, <end>, <unk>; the rest are words."""

    def __init__(self, tokens: list[str]) -> None:
        problem = _tokens_problem(tokens)
        if problem:
            raise ValueError(problem)
        self._tokens = list(tokens)
        self._ids = {tok: i for i, tok in enumerate(self._tokens)}

    @classmethod
    def build(cls, captions: Iterable[str], max_size: int = 5000, min_count: int = 1) -> Vocabulary:
        """Most frequent words (ties alphabetical) seen ``min_count`` times; ``max_size``
        includes the 4 special tokens."""
        if max_size < len(SPECIALS):
            raise CaptionerError(f"vocabulary size {max_size} is too small (at least 4)")
        if min_count < 1:
            raise CaptionerError(f"minimum word count {min_count} must be at least 1")
        counts = Counter(word for caption in captions for word in tokenize(caption))
        ranked = sorted(
            (w for w, n in counts.items() if n >= min_count and w not in SPECIALS),
            key=lambda w: (-counts[w], w),
        )
        return cls(list(SPECIALS) + ranked[: max_size - len(SPECIALS)])

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._tokens == other._tokens

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens)

    def token_to_id(self, token: str) -> int:
        return self._ids.get(token, UNK_ID)

    def id_to_token(self, index: int) -> str:
        if not 0 <= index < len(self._tokens):
            raise IndexError(f"token id {index} is outside the vocabulary (size {len(self)})")
        return self._tokens[index]

    def encode(self, caption: str, max_length: int | None = None) -> list[int]:
        """[<start>] + word ids + [<end>], words cut so the whole fits ``max_length``."""
        ids = [self.token_to_id(word) for word in tokenize(caption)]
        if max_length is not None:
            if max_length < 2:
                raise ValueError(f"max_length {max_length} leaves no room for <start> and <end>")
            ids = ids[: max_length - 2]
        return [START_ID, *ids, END_ID]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Words of ``ids``: <start> and <pad> dropped, stopping at <end>."""
        words: list[str] = []
        for index in ids:
            index = int(index)
            if index == END_ID:
                break
            if index not in (START_ID, PAD_ID):
                words.append(self.id_to_token(index))
        return words

    def fingerprint(self) -> str:
        """sha256 of the token list: equal only for the very same vocabulary."""
        data = json.dumps(self._tokens, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(data.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "tokens": list(self._tokens)}

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "<vocabulary>") -> Vocabulary:
        """Validate and rebuild; ``source`` names the origin in error messages."""
        if not isinstance(data, dict) or "tokens" not in data:
            raise DatasetError(source, "not a vocabulary: expected a JSON object with 'tokens'")
        if data.get("format", FORMAT) != FORMAT:
            raise DatasetError(source, f"not a vocabulary file (format {data.get('format')!r})")
        problem = _tokens_problem(data["tokens"])
        if problem:
            raise DatasetError(source, f"invalid vocabulary: {problem}")
        return cls(data["tokens"])

    def save(self, path: str | Path) -> None:
        """Write JSON (UTF-8, readable non-ASCII) atomically."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_dict(load_json_file(Path(path)), source=path)
