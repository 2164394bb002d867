"""Configuration of the attention decoder: its shape (what a training config sets) and the
full model config (the shape plus the sizes the data decides), saved in ``config.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from captioner.errors import CheckpointError

_POSITIVE = ("encoder_dim", "embed_dim", "attention_dim", "hidden_dim")


@dataclass
class DecoderShape:
    """Sizes and options of the Show-Attend-Tell decoder; the defaults are the seed notebook's."""

    encoder_dim: int = 256
    embed_dim: int = 256
    attention_dim: int = 512
    hidden_dim: int = 512
    dropout: float = 0.0
    init_hidden: str = "zeros"  # "zeros" as in the seed, or "mean" of the encoded regions
    # A learned embedding of each region's grid position, added to the encoded regions. The
    # seed has none, so its context vector says what was seen but not where.
    position_embedding: bool = False

    def __post_init__(self) -> None:
        if self.init_hidden not in ("zeros", "mean"):
            raise ValueError(f"init_hidden must be 'zeros' or 'mean', not {self.init_hidden!r}")
        for name in _POSITIVE:
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")


@dataclass
class ModelConfig(DecoderShape):
    """A decoder's shape plus the sizes its data decides (vocabulary, backbone grid)."""

    vocab_size: int = field(kw_only=True)
    feature_channels: int = field(kw_only=True)
    num_regions: int = field(kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("vocab_size", "feature_channels", "num_regions"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be positive")

    @classmethod
    def of(
        cls, shape: DecoderShape, vocab_size: int, feature_channels: int, num_regions: int
    ) -> ModelConfig:
        return cls(
            **asdict(shape),
            vocab_size=vocab_size,
            feature_channels=feature_channels,
            num_regions=num_regions,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise CheckpointError(f"unknown model config fields: {sorted(unknown)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid model config: {exc}") from exc
