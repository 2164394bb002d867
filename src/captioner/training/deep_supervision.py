"""Auxiliary losses on the denoiser's lower levels (deep supervision), for training only.

Each level below the top gets a 1x1 convolution that reads its decoder output as the noise of
the picture average-pooled to that level's resolution; its loss is the L1 distance between
``pooled noisy - that noise`` and the pooled clean picture. The heads start at zero and are
not part of the saved model: they only give the lower levels a direct signal.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from captioner.denoise.model import DenoiserNet


class LevelHeads(nn.Module):
    """One zero-initialised 1x1 conv per level below the top of ``net``."""

    def __init__(self, net: DenoiserNet) -> None:
        super().__init__()
        channels = net.config.in_channels
        self.heads = nn.ModuleList(nn.Conv2d(w, channels, 1) for w in net.config.widths[1:])
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def loss(self, levels: list[Tensor], noisy: Tensor, clean: Tensor) -> Tensor:
        """Mean over the levels of their L1 loss (``levels`` from ``forward_levels``)."""
        if len(levels) != len(self.heads):
            raise ValueError(f"{len(levels)} level outputs for {len(self.heads)} heads")
        total = noisy.new_zeros(())
        for head, features in zip(self.heads, levels, strict=True):
            scale = noisy.shape[-1] // features.shape[-1]
            pooled_noisy, pooled_clean = F.avg_pool2d(noisy, scale), F.avg_pool2d(clean, scale)
            estimate = pooled_noisy - head(features).float()
            total = total + F.l1_loss(estimate, pooled_clean)
        return total / len(self.heads)
