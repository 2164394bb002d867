"""Bahdanau (additive) attention over the regions of a feature grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BahdanauAttention(nn.Module):
    """score = V·tanh(W1·features + W2·hidden), softmax over regions, weighted sum.

    ``project`` computes the W1·features part once per image so each decoding step only adds
    W2·hidden. The score is evaluated as V·tanh(z) = 2V·σ(2z) − ΣV, the same number: on CPUs
    ``torch.tanh`` of a [B, R, A] tensor costs about ten times ``torch.sigmoid`` and was the
    largest single cost of a training step (docs/BENCHMARKS.md), so ``project`` returns 2z's
    time-independent part and the factor 2 of W2·hidden is folded in per step.
    """

    def __init__(self, feature_dim: int, hidden_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(feature_dim, attention_dim)
        self.w2 = nn.Linear(hidden_dim, attention_dim)
        self.v = nn.Linear(attention_dim, 1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[B, R, F] -> [B, R, A]: 2·W1·features, the part of the score that does not move."""
        return F.linear(features, 2.0 * self.w1.weight, 2.0 * self.w1.bias)

    def forward(
        self,
        features: torch.Tensor,
        projected: torch.Tensor,
        hidden: torch.Tensor,
        scratch: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (context [B, F], weights [B, R]) for decoder state ``hidden`` [B, H].

        ``scratch`` (like ``projected``; only without autograd) receives the [B, R, A]
        activations instead of a new tensor: at beam-search sizes a fresh tensor of that size
        each step costs more in page faults than the sum itself.
        """
        step = F.linear(hidden, 2.0 * self.w2.weight, 2.0 * self.w2.bias).unsqueeze(1)
        pre = projected + step if scratch is None else torch.add(projected, step, out=scratch)
        gate = torch.sigmoid_(pre)  # σ(2z), in place: the sum above is not needed again
        weight = self.v.weight  # [1, A]
        scores = F.linear(gate, 2.0 * weight, self.v.bias - weight.sum()).squeeze(-1)
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.unsqueeze(1), features).squeeze(1)
        return context, weights
