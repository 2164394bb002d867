"""Model 1's network: a linear head on unit-length, standardised, pooled backbone features,
and optionally the style statistics of inner blocks (``doctype/features.py``).

The backbone is a stock ImageNet trunk from ``vision/`` (frozen); the head holds the feature
standardisation (mean/std over the training features) as buffers, so the saved head alone
turns a feature vector into logits. The temperature, fitted on validation after
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
    style_blocks: list[int] = field(default_factory=list)  # inner blocks whose statistics
    style_channels: int = 0  # ... the head reads after the pooled features (2 per channel)
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
        if bool(config.style_blocks) != (config.style_channels > 0):
            raise ValueError("style_blocks and style_channels must be given together")
        if config.temperature <= 0:
            raise ValueError(f"temperature must be positive: {config.temperature}")
        return config


class DocTypeHead(nn.Module):
    """Standardise, drop out, classify: ``[B, C + S]`` pooled features (then ``S`` style
    statistics, if any) -> ``[B, K]`` logits."""

    def __init__(
        self, channels: int, num_classes: int, dropout: float = 0.5, style_channels: int = 0
    ) -> None:
        super().__init__()
        self.channels = channels
        width = channels + style_channels
        self.register_buffer("feature_mean", torch.zeros(width))
        self.register_buffer("feature_std", torch.ones(width))
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(width, num_classes)

    @classmethod
    def for_config(cls, config: DocTypeConfig) -> DocTypeHead:
        return cls(config.channels, len(config.classes), config.dropout, config.style_channels)

    def set_standardisation(self, features: Tensor) -> None:
        x = self._units(features.float())
        self.feature_mean.copy_(x.mean(dim=0))
        self.feature_std.copy_(x.std(dim=0).clamp_min(1e-6))

    def forward(self, features: Tensor) -> Tensor:
        width = self.linear.in_features
        if features.shape[1] != width:
            raise ValueError(f"the head reads {width} features per image, got {features.shape[1]}")
        x = (self._units(features.float()) - self.feature_mean) / self.feature_std
        return self.linear(self.dropout(x))

    def _units(self, x: Tensor) -> Tensor:
        """The pooled part and the style part each scaled to unit length (the same weight
        whatever their sizes)."""
        if x.shape[1] == self.channels:
            return _unit(x)
        return torch.cat([_unit(x[:, : self.channels]), _unit(x[:, self.channels :])], dim=1)


def _unit(x: Tensor) -> Tensor:
    """Each feature vector scaled to unit length: the head reads its direction, not how much
    the image activates the network overall (which differs between sources)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
