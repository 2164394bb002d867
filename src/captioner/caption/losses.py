"""Training objective: masked cross-entropy plus doubly stochastic attention regularisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from captioner.data.vocabulary import PAD_ID


def caption_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    attention: torch.Tensor,
    attention_lambda: float = 0.0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (total loss, cross-entropy) averaged over the non-pad target tokens.

    logits [B, T, V], targets [B, T] (pads = PAD_ID are ignored), attention [B, T, R].
    The regulariser λ·mean_r (1 − Σ_t α_tr)² (Show, Attend and Tell §4.2.1, averaged over regions
    and images as in sgrvinod's tutorial) pushes the model to look at every region over the
    caption; only real (non-pad) steps count.
    """
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=PAD_ID,
        label_smoothing=label_smoothing,
    )
    if attention_lambda <= 0.0:
        return ce, ce.detach()
    mask = (targets != PAD_ID).unsqueeze(-1).to(attention.dtype)
    coverage = (attention * mask).sum(dim=1)  # [B, R]
    regulariser = ((1.0 - coverage) ** 2).mean()
    return ce + attention_lambda * regulariser, ce.detach()
