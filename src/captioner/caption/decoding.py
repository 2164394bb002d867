"""Turning features into word ids: greedy, sampling and batched beam search, and sampling
with gradients for self-critical training.

Everything here works on a ``StepDecoder`` (one attention decoder, or an ensemble of them).
The inference decoders return one ``Hypothesis`` per image with the word ids (no
<start>/<end>), the summed log-probability, and the attention weights of each emitted word.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from captioner.caption.config import ModelConfig
from captioner.caption.decode_settings import DecodeSettings
from captioner.data.vocabulary import END_ID, PAD_ID, START_ID


class StepDecoder(Protocol):
    """A thing that decodes word by word: ``ShowAttendTell`` or an ``Ensemble`` of them."""

    config: ModelConfig

    def encode(self, features: torch.Tensor) -> Any:
        """Per-image tensors [B, ...] reused at every step; they offer ``repeat_interleave(n)``
        and ``select(index)``."""
        ...

    def initial_hidden(self, encoded: Any) -> torch.Tensor: ...

    def step(
        self, tokens: torch.Tensor, hidden: torch.Tensor, encoded: Any
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens [B], hidden [B, H] -> (logits [B, V], hidden, attention [B, R])."""
        ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def eval(self) -> Any: ...


@dataclass
class Hypothesis:
    token_ids: list[int]  # words only, without <start>/<end>
    log_prob: float  # summed log-probability of the words and of <end> when emitted
    token_log_probs: list[float]  # per word
    attention: np.ndarray  # [len(token_ids), R]
    finished: bool  # True when <end> was emitted before max_length


def allowed_logits(logits: torch.Tensor) -> torch.Tensor:
    """Float logits with <pad> and <start> made impossible: they are never a next word (a new
    tensor: the input, and the gradient through the allowed words, are left as they are)."""
    never = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    never[[PAD_ID, START_ID]] = True
    return logits.float().masked_fill(never, float("-inf"))


@dataclass
class SampledCaptions:
    """Captions sampled with their graph kept (for a policy-gradient loss)."""

    token_ids: torch.Tensor  # [N, T]: <pad> after <end>
    log_probs: torch.Tensor  # [N, T]: log-probability of each sampled token, with gradient
    mask: torch.Tensor  # [N, T]: 1 for the tokens that count (words and the closing <end>)


def sample_with_log_probs(
    model: StepDecoder, features: torch.Tensor, samples: int, max_length: int
) -> SampledCaptions:
    """Sample ``samples`` captions per image (rows image-major), keeping the graph of their
    log-probabilities: what self-critical training needs."""
    encoded = model.encode(features).repeat_interleave(samples)
    hidden = model.initial_hidden(encoded)
    n = hidden.shape[0]
    tokens = torch.full((n,), START_ID, dtype=torch.long, device=features.device)
    alive = torch.ones(n, dtype=torch.bool, device=features.device)
    ids, log_probs, masks = [], [], []
    for _ in range(max_length):
        logits, hidden, _ = model.step(tokens, hidden, encoded)
        step_log_probs = torch.log_softmax(allowed_logits(logits), dim=-1)
        tokens = torch.multinomial(step_log_probs.detach().exp(), 1).squeeze(1)
        ids.append(torch.where(alive, tokens, torch.full_like(tokens, PAD_ID)))
        log_probs.append(step_log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1))
        masks.append(alive.float())
        alive = alive & (tokens != END_ID)
        if not bool(alive.any()):
            break
    return SampledCaptions(torch.stack(ids, 1), torch.stack(log_probs, 1), torch.stack(masks, 1))


@torch.inference_mode()
def greedy_decode(
    model: StepDecoder, features: torch.Tensor, max_length: int = DecodeSettings.max_length
) -> list[Hypothesis]:
    """Pick the most probable word at each step."""
    return _step_decode(model, features, max_length, temperature=None, top_k=0, generator=None)


@torch.inference_mode()
def sample_decode(
    model: StepDecoder,
    features: torch.Tensor,
    max_length: int = DecodeSettings.max_length,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> list[Hypothesis]:
    """Sample each word from softmax(logits / temperature), optionally from the top k only."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    return _step_decode(model, features, max_length, temperature, top_k, generator)


def _step_decode(
    model: StepDecoder,
    features: torch.Tensor,
    max_length: int,
    temperature: float | None,
    top_k: int,
    generator: torch.Generator | None,
) -> list[Hypothesis]:
    batch = features.shape[0]
    encoded = model.encode(features)
    hidden = model.initial_hidden(encoded)
    tokens = torch.full((batch,), START_ID, dtype=torch.long, device=features.device)
    done = torch.zeros(batch, dtype=torch.bool, device=features.device)
    chosen, chosen_logp, weights = [], [], []
    for _ in range(max_length):
        logits, hidden, alpha = model.step(tokens, hidden, encoded)
        logits = allowed_logits(logits)
        log_probs = torch.log_softmax(logits, dim=-1)
        if temperature is None:
            tokens = log_probs.argmax(dim=-1)
        else:
            scaled = logits / temperature
            if top_k > 0:
                kth = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1).values[:, -1:]
                scaled = scaled.masked_fill(scaled < kth, float("-inf"))
            probs = torch.softmax(scaled, dim=-1)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        chosen.append(tokens)
        chosen_logp.append(log_probs.gather(1, tokens.unsqueeze(1)).squeeze(1))
        weights.append(alpha)
        done = done | (tokens == END_ID)
        if bool(done.all()):
            break
    ids = torch.stack(chosen, 1).cpu().tolist()
    logps = torch.stack(chosen_logp, 1).cpu().tolist()
    attn = torch.stack(weights, 1).float().cpu().numpy()
    return [_trim(ids[b], logps[b], attn[b]) for b in range(batch)]


def _trim(ids: list[int], logps: list[float], attention: np.ndarray) -> Hypothesis:
    """Cut a step-by-step sequence at its first <end>."""
    finished = END_ID in ids
    n = ids.index(END_ID) if finished else len(ids)
    total = float(sum(logps[: n + 1])) if finished else float(sum(logps[:n]))
    return Hypothesis(ids[:n], total, [float(x) for x in logps[:n]], attention[:n], finished)


@torch.inference_mode()
def beam_search(
    model: StepDecoder,
    features: torch.Tensor,
    beam_size: int = DecodeSettings.beam_size,
    max_length: int = DecodeSettings.max_length,
    length_penalty: float = 1.0,
) -> list[Hypothesis]:
    """Batched beam search over all images at once.

    Hypotheses are ranked by log_prob / length**length_penalty (length counts <end>).
    Every live beam followed by <end> is a candidate at every step; at ``max_length`` the
    beams still alive compete too, so an image none of whose beams emits <end> still gets its
    best hypothesis (the failure of sgrvinod's tutorial, issues #18/#142, is not repeated).
    """
    if beam_size < 1:
        raise ValueError("beam_size must be >= 1")
    if length_penalty < 0:
        raise ValueError("length_penalty must be >= 0")
    batch, device = features.shape[0], features.device
    k = beam_size
    encoded = model.encode(features).repeat_interleave(k)
    hidden = model.initial_hidden(encoded)
    tokens = torch.full((batch * k,), START_ID, dtype=torch.long, device=device)
    # Only the first beam of each image is alive at the start, so the k beams differ.
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    history = torch.zeros((batch, k, 0), dtype=torch.long, device=device)
    step_logps = torch.zeros((batch, k, 0), device=device)
    attn_history = torch.zeros((batch, k, 0, features.shape[1]), device=device)
    best: list[tuple[float, Hypothesis] | None] = [None] * batch
    offsets = (torch.arange(batch, device=device) * k).unsqueeze(1)

    for t in range(max_length):
        logits, hidden, alpha = model.step(tokens, hidden, encoded)
        log_probs = torch.log_softmax(allowed_logits(logits), dim=-1).view(batch, k, -1)
        alpha = alpha.float().view(batch, k, -1)
        vocab = log_probs.shape[-1]

        # Hypotheses that end here: every live beam followed by <end>.
        end_scores = scores + log_probs[:, :, END_ID]
        end_norm = end_scores / float(t + 1) ** length_penalty
        top_end, top_end_beam = end_norm.max(dim=1)
        for b in torch.nonzero(torch.isfinite(top_end)).flatten().tolist():
            value = float(top_end[b])
            if best[b] is None or value > best[b][0]:
                j = int(top_end_beam[b])
                best[b] = (
                    value,
                    Hypothesis(
                        history[b, j].tolist(),
                        float(end_scores[b, j]),
                        step_logps[b, j].tolist(),
                        attn_history[b, j].cpu().numpy(),
                        True,
                    ),
                )

        # Beams that go on: the k best continuations that are not <end>.
        candidates = scores.unsqueeze(-1) + log_probs
        candidates[:, :, END_ID] = float("-inf")
        scores, flat = candidates.view(batch, -1).topk(k, dim=1)
        beam_idx = torch.div(flat, vocab, rounding_mode="floor")
        word_idx = flat % vocab
        gather = (offsets + beam_idx).flatten()
        word_logp = log_probs.view(batch * k, -1)[gather, word_idx.flatten()].view(batch, k)
        history = torch.cat(
            [history[torch.arange(batch).unsqueeze(1), beam_idx], word_idx.unsqueeze(-1)], dim=-1
        )
        step_logps = torch.cat(
            [step_logps[torch.arange(batch).unsqueeze(1), beam_idx], word_logp.unsqueeze(-1)],
            dim=-1,
        )
        picked_alpha = alpha[torch.arange(batch).unsqueeze(1), beam_idx]
        attn_history = torch.cat(
            [attn_history[torch.arange(batch).unsqueeze(1), beam_idx], picked_alpha.unsqueeze(2)],
            dim=2,
        )
        hidden = hidden[gather]
        tokens = word_idx.flatten()

        # Stop once no live beam can beat the best finished one, even at max length
        # (log-probs only fall, and the normaliser is at most max_length**penalty).
        bound = scores.max(dim=1).values / float(max_length + 1) ** length_penalty
        if all(best[b] is not None and best[b][0] >= float(bound[b]) for b in range(batch)):
            break

    # Beams still alive at max_length compete with the finished ones on the same footing.
    length = history.shape[-1]
    alive_norm = scores / float(max(length, 1)) ** length_penalty
    results = []
    for b in range(batch):
        j = int(alive_norm[b].argmax())
        if best[b] is not None and best[b][0] >= float(alive_norm[b, j]):
            results.append(best[b][1])
            continue
        results.append(
            Hypothesis(
                history[b, j].tolist(),
                float(scores[b, j]),
                step_logps[b, j].tolist(),
                attn_history[b, j].cpu().numpy(),
                False,
            )
        )
    return results
