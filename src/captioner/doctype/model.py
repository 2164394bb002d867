"""Model 1's network: a linear head on unit-length, standardised, pooled backbone features.

The backbone is a stock ImageNet trunk from ``vision/`` (frozen); the head holds the feature
standardisation (mean/std over the training features) as buffers, so the saved head alone
turns a pooled feature vector into logits. The temperature, fitted on validation after
training, turns logits into calibrated probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class DocTypeConfig:
    """What a saved classifier is: its classes, the backbone it reads and its head."""

    classes: list[str]
    backbone: str = "mobilenet_v2"
    backbone_weights_id: str = ""
    channels: int = 1280
    image_size: int | None = None  # the backbone's input side; None: its own default
    dropout: float = 0.5
    photo_class: str | None = "Photo"  # None: no photo class (no photo decision)
    photo_threshold: float = 0.5
    temperature: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DocTypeConfig:
        config = cls(**data)
        if len(config.classes) < 2 or len(set(config.classes)) != len(config.classes):
            raise ValueError(f"classes must be two or more distinct names: {config.classes}")
        if config.temperature <= 0:
            raise ValueError(f"temperature must be positive: {config.temperature}")
        return config


class DocTypeHead(nn.Module):
    """Standardise, drop out, classify: ``[B, C]`` pooled features -> ``[B, K]`` logits."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(channels))
        self.register_buffer("feature_std", torch.ones(channels))
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(channels, num_classes)

    def set_standardisation(self, features: Tensor) -> None:
        x = _unit(features.float())
        self.feature_mean.copy_(x.mean(dim=0))
        self.feature_std.copy_(x.std(dim=0).clamp_min(1e-6))

    def forward(self, pooled: Tensor) -> Tensor:
        x = (_unit(pooled.float()) - self.feature_mean) / self.feature_std
        return self.linear(self.dropout(x))


def _unit(x: Tensor) -> Tensor:
    """Each feature vector scaled to unit length: the head reads its direction, not how much
    the image activates the network overall (which differs between sources)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
