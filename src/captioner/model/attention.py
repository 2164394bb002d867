"""Bahdanau (additive) attention over the regions of a feature grid."""

from __future__ import annotations

import torch
from torch import nn


class BahdanauAttention(nn.Module):
    """score = V·tanh(W1·features + W2·hidden), softmax over regions, weighted sum.

    ``project`` computes W1·features once per image so each decoding step only adds W2·hidden.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(feature_dim, attention_dim)
        self.w2 = nn.Linear(hidden_dim, attention_dim)
        self.v = nn.Linear(attention_dim, 1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[B, R, F] -> [B, R, A]: the part of the score that does not depend on time."""
        return self.w1(features)

    def forward(
        self, features: torch.Tensor, projected: torch.Tensor, hidden: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (context [B, F], weights [B, R]) for decoder state ``hidden`` [B, H]."""
        scores = self.v(torch.tanh(projected + self.w2(hidden).unsqueeze(1))).squeeze(-1)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), features).squeeze(1)
        return context, weights
