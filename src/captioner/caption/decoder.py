"""The Show-Attend-Tell decoder of the seed notebook, in PyTorch.

encoder: Linear(C -> encoder_dim) + ReLU on each region;
each step: Bahdanau attention -> [context ; embedding(previous word)] -> GRU
-> Linear(hidden) -> Linear(vocab).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from captioner.caption.attention import BahdanauAttention
from captioner.caption.config import ModelConfig
from captioner.data.vocabulary import PAD_ID


@dataclass
class EncodedImages:
    """Per-image tensors computed once and reused at every decoding step."""

    regions: torch.Tensor  # [B, R, encoder_dim]
    projected: torch.Tensor  # [B, R, attention_dim]
    _scratch: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def scratch(self, batch: int) -> torch.Tensor | None:
        """A reusable [batch, R, attention_dim] buffer for the attention (no autograd only)."""
        if torch.is_grad_enabled():
            return None
        if self._scratch is None or self._scratch.shape[0] < batch:
            self._scratch = torch.empty_like(self.projected[:batch])
        return self._scratch[:batch]

    def repeat_interleave(self, times: int) -> EncodedImages:
        return EncodedImages(
            self.regions.repeat_interleave(times, dim=0),
            self.projected.repeat_interleave(times, dim=0),
        )

    def select(self, index: torch.Tensor) -> EncodedImages:
        return EncodedImages(self.regions[index], self.projected[index])


@dataclass
class TeacherForcingOutput:
    logits: torch.Tensor  # [B, T, V]
    attention: torch.Tensor  # [B, T, R]


class ShowAttendTell(nn.Module):
    """Attention GRU decoder over a grid of CNN features."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = nn.Sequential(
            nn.Linear(config.feature_channels, config.encoder_dim), nn.ReLU()
        )
        self.attention = BahdanauAttention(
            config.encoder_dim, config.hidden_dim, config.attention_dim
        )
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=0)
        self.gru = nn.GRUCell(config.encoder_dim + config.embed_dim, config.hidden_dim)
        self.fc1 = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.hidden_dim, config.vocab_size)
        if config.init_hidden == "mean":
            self.init_h = nn.Linear(config.encoder_dim, config.hidden_dim)
        if config.position_embedding:
            self.positions = nn.Parameter(torch.zeros(config.num_regions, config.encoder_dim))
            nn.init.normal_(self.positions, std=0.02)

    def encode(self, features: torch.Tensor) -> EncodedImages:
        """features [B, R, C] from the backbone -> encoded regions and their projection."""
        if features.dim() != 3 or features.shape[-1] != self.config.feature_channels:
            raise ValueError(
                f"expected features [B, R, {self.config.feature_channels}], "
                f"got {list(features.shape)}"
            )
        regions = self.encoder(features)
        if self.config.position_embedding:
            if features.shape[1] != self.config.num_regions:
                raise ValueError(
                    f"expected {self.config.num_regions} regions, got {features.shape[1]}"
                )
            regions = regions + self.positions
        return EncodedImages(regions, self.attention.project(regions))

    def initial_hidden(self, encoded: EncodedImages) -> torch.Tensor:
        regions = encoded.regions
        if self.config.init_hidden == "mean":
            return torch.tanh(self.init_h(regions.mean(dim=1)))
        return regions.new_zeros(regions.shape[0], self.config.hidden_dim)

    def step(
        self, tokens: torch.Tensor, hidden: torch.Tensor, encoded: EncodedImages
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One word: tokens [B] and hidden [B, H] -> (logits [B, V], hidden, attention [B, R])."""
        hidden, weights = self._advance(self.embedding(tokens), hidden, encoded)
        return self.output(hidden), hidden, weights

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., H] -> word logits [..., V]."""
        return self.fc2(self.dropout(self.fc1(hidden)))

    def _advance(
        self, embedded: torch.Tensor, hidden: torch.Tensor, encoded: EncodedImages
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scratch = encoded.scratch(hidden.shape[0])
        context, weights = self.attention(encoded.regions, encoded.projected, hidden, scratch)
        hidden = self.gru(torch.cat([context, embedded], dim=-1), hidden)
        return hidden, weights

    def forward(
        self, features: torch.Tensor, captions: torch.Tensor, skip_padding: bool = False
    ) -> TeacherForcingOutput:
        """Teacher forcing: captions [B, L] start with <start>; predicts captions[:, 1:].

        Only the recurrence runs step by step; embeddings and the output layers are applied
        to all steps at once. With ``skip_padding`` the captions are sorted by length and each
        step runs only the ones still going, and the output layers run on real (non-pad)
        targets only: the loss (which ignores pads) is the same, but the logits and attention
        at padded targets are zeros instead of the model's continuation after <end>.
        """
        encoded = self.encode(features)
        hidden = self.initial_hidden(encoded)
        embedded = self.embedding(captions[:, :-1])
        if skip_padding:
            packed = self._packed_forward(encoded, hidden, embedded, captions[:, 1:])
            if packed is not None:
                return packed
        states, attention = [], []
        for t in range(embedded.shape[1]):
            hidden, weights = self._advance(embedded[:, t], hidden, encoded)
            states.append(hidden)
            attention.append(weights)
        logits = self.output(torch.stack(states, dim=1))
        return TeacherForcingOutput(logits, torch.stack(attention, dim=1))

    def _packed_forward(
        self,
        encoded: EncodedImages,
        hidden: torch.Tensor,
        embedded: torch.Tensor,
        targets: torch.Tensor,
    ) -> TeacherForcingOutput | None:
        """Teacher forcing over the steps up to each caption's last real target.

        Returns None when no caption has trailing pads (nothing to skip) or none has a target.
        """
        batch, length = targets.shape
        positions = torch.arange(1, length + 1, device=targets.device)
        steps = ((targets != PAD_ID) * positions).amax(dim=1)  # last real target + 1
        step_list = steps.tolist()
        if min(step_list) == length or max(step_list) == 0:
            return None
        order = torch.argsort(steps, descending=True, stable=True)
        active = sorted(step_list, reverse=True)
        encoded = encoded.select(order)
        hidden, embedded = hidden[order], embedded[order]
        states, attention = [], []
        running = batch
        for t in range(max(active)):
            while active[running - 1] <= t:
                running -= 1
            if running < hidden.shape[0]:
                hidden = hidden[:running]
                encoded = EncodedImages(
                    encoded.regions[:running], encoded.projected[:running], encoded._scratch
                )
            hidden, weights = self._advance(embedded[:running, t], hidden, encoded)
            states.append(hidden)
            attention.append(weights)
        # Row i of step t is caption order[i]; its flat index in [B, T] is order[i] * T + t.
        flat = torch.cat([order[: s.shape[0]] * length + t for t, s in enumerate(states)])
        logits = self.output(torch.cat(states))
        full_logits = logits.new_zeros(batch * length, logits.shape[-1]).index_copy(0, flat, logits)
        weights = torch.cat(attention)
        full_attention = weights.new_zeros(batch * length, weights.shape[-1]).index_copy(
            0, flat, weights
        )
        return TeacherForcingOutput(
            full_logits.view(batch, length, -1), full_attention.view(batch, length, -1)
        )
