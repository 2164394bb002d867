"""How features become words: the one place the decoding defaults (beam 3, 30 words) live."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DecodeSettings:
    """How to turn features into words (``beam_size`` 1 means greedy)."""

    beam_size: int = 3
    max_length: int = 30
    length_penalty: float = 1.0
    sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def describe(self) -> str:
        if self.sample:
            return f"sampling (temperature {self.temperature}, top-k {self.top_k or 'all'})"
        return "greedy" if self.beam_size == 1 else f"beam search (beam {self.beam_size})"
