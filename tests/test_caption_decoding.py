"""Decoder shapes, loss masking, and the three decoding strategies."""

from __future__ import annotations

import itertools

import pytest
import torch

from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.caption.decoding import beam_search, greedy_decode, sample_decode
from captioner.caption.losses import caption_loss
from captioner.data.vocabulary import END_ID, PAD_ID, START_ID


def make_model(vocab_size: int = 12, seed: int = 0, **kw) -> ShowAttendTell:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=vocab_size,
        feature_channels=8,
        num_regions=4,
        encoder_dim=16,
        embed_dim=8,
        attention_dim=16,
        hidden_dim=16,
        **kw,
    )
    return ShowAttendTell(config).eval()


def test_teacher_forcing_shapes_and_attention_sums_to_one() -> None:
    model = make_model()
    feats = torch.randn(3, 4, 8)
    caps = torch.tensor(
        [[START_ID, 5, 6, END_ID], [START_ID, 7, END_ID, PAD_ID], [START_ID, 4, 4, 4]]
    )
    out = model(feats, caps)
    assert out.logits.shape == (3, 3, 12)
    assert out.attention.shape == (3, 3, 4)
    torch.testing.assert_close(out.attention.sum(-1), torch.ones(3, 3))


def test_loss_ignores_padding() -> None:
    logits = torch.randn(2, 3, 12)
    targets = torch.tensor([[5, END_ID, PAD_ID], [6, 7, END_ID]])
    attention = torch.full((2, 3, 4), 0.25)
    _, ce = caption_loss(logits, targets, attention)
    changed = logits.clone()
    changed[0, 2] = 100.0  # a padded position: must not change the loss
    _, ce2 = caption_loss(changed, targets, attention)
    assert ce == pytest.approx(float(ce2))


def test_doubly_stochastic_regulariser_is_zero_when_every_region_sums_to_one() -> None:
    logits = torch.randn(1, 4, 12)
    targets = torch.tensor([[5, 6, 7, END_ID]])
    identity = torch.eye(4).unsqueeze(0)  # step t looks only at region t: coverage 1 everywhere
    total, ce = caption_loss(logits, targets, identity, attention_lambda=1.0)
    assert float(total) == pytest.approx(float(ce))
    focused = torch.zeros(1, 4, 4)
    focused[..., 0] = 1.0  # always the same region: coverage (4, 0, 0, 0)
    total, ce = caption_loss(logits, targets, focused, attention_lambda=1.0)
    assert float(total) == pytest.approx(float(ce) + (9 + 1 + 1 + 1) / 4)


def test_greedy_returns_words_and_attention_per_word() -> None:
    model = make_model()
    hyps = greedy_decode(model, torch.randn(5, 4, 8), max_length=7)
    assert len(hyps) == 5
    for h in hyps:
        assert len(h.token_ids) <= 7
        assert END_ID not in h.token_ids and START_ID not in h.token_ids
        assert h.attention.shape == (len(h.token_ids), 4)
        assert len(h.token_log_probs) == len(h.token_ids)


def test_sampling_is_reproducible_with_a_seed_and_top_k_one_is_greedy() -> None:
    model = make_model()
    feats = torch.randn(4, 4, 8)
    a = sample_decode(model, feats, 8, generator=torch.Generator().manual_seed(3))
    b = sample_decode(model, feats, 8, generator=torch.Generator().manual_seed(3))
    assert [h.token_ids for h in a] == [h.token_ids for h in b]
    top1 = sample_decode(model, feats, 8, top_k=1, generator=torch.Generator().manual_seed(1))
    assert [h.token_ids for h in top1] == [h.token_ids for h in greedy_decode(model, feats, 8)]


def never_ending_model() -> ShowAttendTell:
    model = make_model()
    with torch.no_grad():
        model.fc2.bias[END_ID] = -1e4
    return model


def test_beam_search_without_end_still_returns_best_hypothesis_at_max_length() -> None:
    model = never_ending_model()
    hyps = beam_search(model, torch.randn(3, 4, 8), beam_size=4, max_length=6)
    assert len(hyps) == 3
    for h in hyps:
        assert not h.finished
        assert len(h.token_ids) == 6
        assert h.attention.shape == (6, 4)


def sequence_log_prob(model: ShowAttendTell, feats: torch.Tensor, words: list[int]) -> float:
    caps = torch.tensor([[START_ID, *words]])
    logits = model(feats, caps).logits
    logits[..., [PAD_ID, START_ID]] = float("-inf")  # never a next word, as in decoding
    logp = torch.log_softmax(logits, -1)[0]
    return float(sum(logp[t, w] for t, w in enumerate(words)))


def test_wide_beam_finds_the_exact_most_probable_caption() -> None:
    model = make_model(vocab_size=6, seed=4)  # 2 real words (4, 5) and <unk>
    max_length = 3
    for seed in range(5):
        feats = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(seed))
        candidates = []  # (score, words, finished): every caption beam search may return
        with torch.no_grad():
            for n in range(0, max_length + 1):
                for words in itertools.product([3, 4, 5], repeat=n):
                    if n < max_length:
                        score = sequence_log_prob(model, feats, [*words, END_ID])
                        candidates.append((score, list(words), True))
                    else:
                        score = sequence_log_prob(model, feats, list(words))
                        candidates.append((score, list(words), False))
        best_score, best_words, best_finished = max(candidates, key=lambda c: c[0])
        hyp = beam_search(model, feats, beam_size=64, max_length=max_length, length_penalty=0.0)
        assert hyp[0].token_ids == best_words
        assert hyp[0].finished == best_finished
        assert hyp[0].log_prob == pytest.approx(best_score, abs=1e-4)


def test_beam_of_one_scores_at_least_the_greedy_caption() -> None:
    model = make_model(seed=2)
    feats = torch.randn(6, 4, 8)
    greedy = greedy_decode(model, feats, max_length=10)
    beam = beam_search(model, feats, beam_size=1, max_length=10, length_penalty=0.0)
    for g, b in zip(greedy, beam, strict=True):
        if g.finished:
            assert b.log_prob >= g.log_prob - 1e-5


def test_batched_beam_equals_one_image_at_a_time() -> None:
    model = make_model(seed=5)
    feats = torch.randn(4, 4, 8)
    batched = beam_search(model, feats, beam_size=3, max_length=8)
    single = [beam_search(model, feats[i : i + 1], beam_size=3, max_length=8)[0] for i in range(4)]
    assert [h.token_ids for h in batched] == [h.token_ids for h in single]
    for a, b in zip(batched, single, strict=True):
        assert a.log_prob == pytest.approx(b.log_prob, abs=1e-4)


def test_teacher_forcing_equals_step_by_step_decoding() -> None:
    model = make_model(position_embedding=True, init_hidden="mean")
    feats = torch.randn(2, 4, 8)
    caps = torch.tensor([[START_ID, 5, 6, 7, END_ID], [START_ID, 8, 9, END_ID, PAD_ID]])
    out = model(feats, caps)
    encoded = model.encode(feats)
    hidden = model.initial_hidden(encoded)
    for t in range(caps.shape[1] - 1):
        logits, hidden, alpha = model.step(caps[:, t], hidden, encoded)
        torch.testing.assert_close(logits, out.logits[:, t])
        torch.testing.assert_close(alpha, out.attention[:, t])
