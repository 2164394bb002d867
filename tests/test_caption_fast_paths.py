"""The speed paths of the decoder compute the same thing as the plain ones."""

from __future__ import annotations

import pytest
import torch

from captioner.caption.attention import BahdanauAttention
from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.caption.losses import caption_loss
from captioner.data.vocabulary import END_ID, PAD_ID, START_ID


def make_model(**kw: object) -> ShowAttendTell:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=20,
        feature_channels=8,
        num_regions=5,
        encoder_dim=12,
        embed_dim=6,
        attention_dim=10,
        hidden_dim=14,
        **kw,
    )
    return ShowAttendTell(config)


CAPTIONS = torch.tensor(
    [
        [START_ID, 5, 6, END_ID, PAD_ID, PAD_ID],
        [START_ID, 7, 8, 9, 10, END_ID],
        [START_ID, END_ID, PAD_ID, PAD_ID, PAD_ID, PAD_ID],
        [START_ID, 11, PAD_ID, 12, END_ID, PAD_ID],  # a pad inside: its step still runs
    ]
)


def test_attention_equals_the_tanh_formula() -> None:
    torch.manual_seed(1)
    attention = BahdanauAttention(6, 7, 9)
    features, hidden = torch.randn(3, 5, 6), torch.randn(3, 7)
    context, weights = attention(features, attention.project(features), hidden)
    scores = attention.v(torch.tanh(attention.w1(features) + attention.w2(hidden)[:, None]))
    expected = torch.softmax(scores.squeeze(-1), dim=-1)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(context, torch.einsum("br,brf->bf", expected, features))


def test_skip_padding_gives_the_same_loss_gradients_and_real_outputs() -> None:
    model = make_model(init_hidden="mean", position_embedding=True)
    features = torch.randn(4, 5, 8)
    targets = CAPTIONS[:, 1:]
    grads = []
    outputs = []
    for skip in (False, True):
        model.zero_grad()
        out = model(features, CAPTIONS, skip_padding=skip)
        loss, _ = caption_loss(out.logits, targets, out.attention, attention_lambda=1.0)
        loss.backward()
        outputs.append((out, float(loss.detach())))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    (plain, plain_loss), (packed, packed_loss) = outputs
    assert packed.logits.shape == plain.logits.shape == (4, 5, 20)
    assert packed_loss == pytest.approx(plain_loss, abs=1e-6)
    real = targets != PAD_ID
    real[3, 1] = True  # the inner pad's step runs in both
    torch.testing.assert_close(packed.logits[real], plain.logits[real])
    torch.testing.assert_close(packed.attention[real], plain.attention[real])
    after_end = torch.tensor([[0, 0, 0, 1, 1], [0] * 5, [0, 1, 1, 1, 1], [0, 0, 0, 0, 1]]).bool()
    assert float(packed.logits.detach()[after_end].abs().max()) == 0.0
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_skip_padding_without_trailing_pads_is_the_plain_forward() -> None:
    model = make_model()
    features = torch.randn(2, 5, 8)
    captions = torch.tensor([[START_ID, 5, 6, END_ID], [START_ID, 7, 8, END_ID]])
    plain = model(features, captions)
    packed = model(features, captions, skip_padding=True)
    torch.testing.assert_close(packed.logits, plain.logits)


def test_scratch_buffer_steps_match_autograd_steps() -> None:
    model = make_model().eval()
    features = torch.randn(3, 5, 8)
    tokens = torch.tensor([START_ID, 4, 5])
    encoded = model.encode(features)
    hidden = model.initial_hidden(encoded)
    expected, _, alpha = model.step(tokens, hidden, encoded)  # grad enabled: no scratch
    with torch.inference_mode():
        encoded = model.encode(features)
        logits, _, alpha2 = model.step(tokens, model.initial_hidden(encoded), encoded)
        assert encoded.scratch(3) is not None
        logits2, _, _ = model.step(tokens, model.initial_hidden(encoded), encoded)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(logits2, expected)
    torch.testing.assert_close(alpha2, alpha)
