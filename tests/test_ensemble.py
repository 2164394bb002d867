"""Ensembles: several decoders decoding as one by averaging their word probabilities."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from captioner.caption.captioner import Captioner
from captioner.caption.decoding import beam_search, greedy_decode
from captioner.caption.ensemble import Ensemble
from captioner.cli import main
from captioner.data.vocabulary import START_ID, Vocabulary
from captioner.errors import CaptionerError
from tests.tiny import split_command, train_tiny, write_tiny_dataset


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Path]]:
    root = tmp_path_factory.mktemp("ensemble")
    manifest, features, _ = write_tiny_dataset(root)
    folders = [train_tiny(manifest, features, root / f"run{s}", epochs=3, seed=s) for s in (0, 1)]
    return manifest, features, folders


def test_step_averages_member_probabilities(two_models: tuple[Path, Path, list[Path]]) -> None:
    _, _, folders = two_models
    members = [Captioner.from_pretrained(f, backbone_weights=None).model for f in folders]
    ensemble = Ensemble(members).eval()
    features = torch.randn(3, 4, 8)
    tokens = torch.full((3,), START_ID, dtype=torch.long)
    with torch.no_grad():
        encoded = ensemble.encode(features)
        logits, hidden, attention = ensemble.step(tokens, ensemble.initial_hidden(encoded), encoded)
        probs = []
        for member in members:
            enc = member.encode(features)
            member_logits, _, _ = member.step(tokens, member.initial_hidden(enc), enc)
            member_logits[:, :2] = float("-inf")  # <pad>, <start> are never next
            probs.append(member_logits.softmax(dim=-1))
    assert torch.allclose(logits.exp(), (probs[0] + probs[1]) / 2, atol=1e-6)
    assert hidden.shape == (3, 64) and attention.shape == (3, 4)


def test_an_ensemble_of_one_model_twice_decodes_like_the_model(
    two_models: tuple[Path, Path, list[Path]],
) -> None:
    _, _, folders = two_models
    model = Captioner.from_pretrained(folders[0], backbone_weights=None).model
    twice = Ensemble([model, model]).eval()
    features = torch.randn(4, 4, 8)
    for decode in (greedy_decode, lambda m, f: beam_search(m, f, beam_size=3)):
        alone, doubled = decode(model, features), decode(twice, features)
        assert [h.token_ids for h in alone] == [h.token_ids for h in doubled]
        assert [h.log_prob for h in alone] == pytest.approx([h.log_prob for h in doubled])


def test_evaluate_an_ensemble(two_models: tuple[Path, Path, list[Path]], tmp_path: Path) -> None:
    manifest, features, folders = two_models
    out = tmp_path / "eval.json"
    extra = ["--no-java", "--no-progress", "--output", str(out)]
    code = main(split_command("evaluate", folders, manifest, features, "val", *extra))
    assert code == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["model"] == [str(f) for f in folders]
    assert report["model_info"]["ensemble"] == [str(f) for f in folders]
    assert report["num_images"] == 6


def test_members_must_share_vocabulary(
    two_models: tuple[Path, Path, list[Path]], tmp_path: Path
) -> None:
    _, _, folders = two_models
    other = Captioner.from_pretrained(folders[1], backbone_weights=None)
    tokens = other.vocab.tokens
    other.vocab = Vocabulary(tokens[:4] + list(reversed(tokens[4:])))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CaptionerError, match="vocabulary differs"):
        Captioner.from_pretrained_ensemble([folders[0], tmp_path / "other"], backbone_weights=None)
    ensemble = Captioner.from_pretrained_ensemble(folders, backbone_weights=None)
    with pytest.raises(CaptionerError, match="ensemble is not saved"):
        ensemble.save_pretrained(tmp_path / "ensemble")
