"""Several trained decoders decoding as one: the word distribution is the mean of theirs.

``Ensemble`` is a ``StepDecoder`` (caption/decoding.py) like ``ShowAttendTell``, so greedy,
sampling and beam search work on it unchanged. The
members' hidden states travel concatenated in one tensor (beam search reorders it by rows);
``step`` returns log(mean of the members' probabilities) as the logits and the mean attention.
With ``own_features`` each member reads its own grid (members whose backbones were fine-tuned
separately): the features are the members' grids concatenated on the channel axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from captioner.caption.decoder import EncodedImages, ShowAttendTell
from captioner.caption.decoding import allowed_logits
from captioner.errors import CaptionerError


class EnsembleEncoded:
    """One ``EncodedImages`` per member, indexed together."""

    def __init__(self, parts: list[EncodedImages]) -> None:
        self.parts = parts

    def repeat_interleave(self, times: int) -> EnsembleEncoded:
        return EnsembleEncoded([part.repeat_interleave(times) for part in self.parts])

    def select(self, index: torch.Tensor) -> EnsembleEncoded:
        return EnsembleEncoded([part.select(index) for part in self.parts])


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[ShowAttendTell], own_features: bool = False) -> None:
        super().__init__()
        if len(members) < 2:
            raise CaptionerError("an ensemble needs at least two models")
        first = members[0].config
        for member in members[1:]:
            for name in ("vocab_size", "feature_channels", "num_regions"):
                if getattr(member.config, name) != getattr(first, name):
                    raise CaptionerError(
                        f"ensemble members differ in {name}: {getattr(first, name)} vs "
                        f"{getattr(member.config, name)}"
                    )
        self.members = nn.ModuleList(members)
        self.config = first
        self.own_features = own_features
        self._hidden_sizes = [m.config.hidden_dim for m in members]

    def encode(self, features: torch.Tensor) -> EnsembleEncoded:
        if not self.own_features:
            return EnsembleEncoded([m.encode(features) for m in self.members])
        grids = features.split(self.config.feature_channels, dim=-1)
        if len(grids) != len(self.members):
            raise CaptionerError(
                f"{len(self.members)} members reading their own grids need "
                f"{len(self.members)} x {self.config.feature_channels} channels, not "
                f"{features.shape[-1]}"
            )
        return EnsembleEncoded([m.encode(g) for m, g in zip(self.members, grids, strict=True)])

    def initial_hidden(self, encoded: EnsembleEncoded) -> torch.Tensor:
        return torch.cat(
            [m.initial_hidden(e) for m, e in zip(self.members, encoded.parts, strict=True)], dim=-1
        )

    def step(
        self, tokens: torch.Tensor, hidden: torch.Tensor, encoded: EnsembleEncoded
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_probs, hiddens, attention = [], [], []
        for member, h, e in zip(
            self.members, hidden.split(self._hidden_sizes, dim=-1), encoded.parts, strict=True
        ):
            logits, h, weights = member.step(tokens, h, e)
            log_probs.append(torch.log_softmax(allowed_logits(logits), dim=-1))
            hiddens.append(h)
            attention.append(weights)
        mean = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(log_probs))
        return mean, torch.cat(hiddens, dim=-1), torch.stack(attention).mean(dim=0)
