"""Self-critical sequence training: the CIDEr-D reward, the baseline, and a real fine-tuning run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pycocoevalcap.cider.cider import Cider
from safetensors.torch import load_file

from captioner.caption.captioner import Captioner
from captioner.caption.config import ModelConfig
from captioner.caption.decoder import ShowAttendTell
from captioner.caption.decoding import sample_with_log_probs
from captioner.cli import main
from captioner.data.vocabulary import END_ID, PAD_ID
from captioner.errors import CaptionerError
from captioner.training.cider_reward import CiderD
from captioner.training.scst import ScstConfig, finetune, leave_one_out_advantage
from tests.tiny import train_tiny, write_tiny_dataset

REFS = {
    "a": ["a dog runs on the grass", "a brown dog running outside", "the dog is on the green lawn"],
    "b": ["two people ride bikes on a road", "cyclists on a city street", "people riding bicycles"],
    "c": [
        "a plate of food on a table",
        "a meal with rice and beans",
        "food served on a white plate",
    ],
}
HYPS = {
    "a": "a dog runs on the lawn",
    "b": "two people riding bikes",
    "c": "a white plate with food on a table",
}


def test_cider_d_matches_pycocoevalcap_when_idf_comes_from_the_same_images() -> None:
    reward = CiderD({k: [r.split() for r in refs] for k, refs in REFS.items()})
    ours = [reward.score(k, HYPS[k].split()) for k in REFS]
    corpus, per_image = Cider().compute_score(REFS, {k: [h] for k, h in HYPS.items()})
    assert ours == pytest.approx(list(per_image), abs=1e-9)
    assert sum(ours) / len(ours) == pytest.approx(corpus, abs=1e-9)


def test_cider_d_rewards_a_reference_more_than_a_wrong_caption() -> None:
    reward = CiderD({k: [r.split() for r in refs] for k, refs in REFS.items()})
    assert reward.score("a", REFS["a"][0].split()) > reward.score("a", HYPS["c"].split()) >= 0
    assert reward.score("a", []) == 0.0
    assert "a" in reward and "z" not in reward


def test_leave_one_out_baseline() -> None:
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0])
    advantage = leave_one_out_advantage(rewards, samples=3)
    # image 1: 1 - (2+3)/2, 2 - (1+3)/2, 3 - (1+2)/2; image 2 likewise
    assert advantage.tolist() == pytest.approx([-1.5, 0.0, 1.5, -1.5, -1.5, 3.0])


def test_samples_stop_at_end_and_keep_gradients() -> None:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=12,
        feature_channels=8,
        num_regions=4,
        hidden_dim=16,
        encoder_dim=8,
        embed_dim=8,
        attention_dim=8,
    )
    model = ShowAttendTell(config)
    sampled = sample_with_log_probs(model, torch.randn(3, 4, 8), 4, max_length=6)
    ids, log_probs, mask = sampled.token_ids, sampled.log_probs, sampled.mask
    assert ids.shape[0] == 12 and ids.shape == log_probs.shape == mask.shape
    assert log_probs.requires_grad
    for row, row_mask in zip(ids.tolist(), mask.tolist(), strict=True):
        if END_ID in row:
            end = row.index(END_ID)
            assert all(t == PAD_ID for t in row[end + 1 :])
            assert row_mask == [1.0] * (end + 1) + [0.0] * (len(row) - end - 1)
        else:
            assert row_mask == [1.0] * len(row)
    (log_probs * mask).sum().backward()
    assert model.fc2.weight.grad is not None


def test_scst_finetunes_a_trained_model_and_resumes(tmp_path: Path) -> None:
    manifest, features, _ = write_tiny_dataset(tmp_path)
    trained = train_tiny(manifest, features, tmp_path / "xe", epochs=3)
    config = ScstConfig(
        model=str(trained),
        manifest=str(manifest),
        features=str(features),
        out=str(tmp_path / "scst"),
        epochs=2,
        learning_rate=1e-3,
        samples=3,
        batch_images=3,
        max_length=10,
        eval_beam_size=1,
        progress=False,
    )
    result = finetune(config)
    assert [r["epoch"] for r in result.history] == [0, 1, 2]
    assert all("train_reward" in r for r in result.history[1:])
    model = Captioner.from_pretrained(result.model_dir, backbone_weights=None)
    assert model.info["scst"]["epoch"] == result.best_epoch
    with pytest.raises(CaptionerError, match="--resume"):
        finetune(config)
    with pytest.raises(CaptionerError, match="samples: 3 then, 4 now"):
        finetune(ScstConfig(**{**config.__dict__, "samples": 4}), resume=True)
    more = finetune(ScstConfig(**{**config.__dict__, "epochs": 3}), resume=True)
    assert [r["epoch"] for r in more.history] == [0, 1, 2, 3]


def test_resumed_scst_ends_with_the_weights_of_an_uninterrupted_run(tmp_path: Path) -> None:
    manifest, features, _ = write_tiny_dataset(tmp_path)
    trained = train_tiny(manifest, features, tmp_path / "xe", epochs=3)

    def config(out: str, epochs: int) -> ScstConfig:
        return ScstConfig(
            model=str(trained), manifest=str(manifest), features=str(features),
            out=str(tmp_path / out), epochs=epochs, learning_rate=3e-3, samples=3,
            batch_images=2, max_length=10, eval_beam_size=1, patience=10, progress=False,
        )  # fmt: skip

    whole = finetune(config("whole", 3))
    finetune(config("parts", 1))
    resumed = finetune(config("parts", 3), resume=True)
    timing = ("seconds", "elapsed")
    assert [{k: v for k, v in r.items() if k not in timing} for r in resumed.history] == [
        {k: v for k, v in r.items() if k not in timing} for r in whole.history
    ]
    # the full training state: weights, Adam's moments, the RNGs
    state = {
        n: load_file(str(tmp_path / n / "checkpoint" / "state.safetensors"))
        for n in ("whole", "parts")
    }
    assert state["whole"].keys() == state["parts"].keys()
    for key, value in state["whole"].items():
        assert torch.equal(value, state["parts"][key]), key
    start = load_file(str(trained / "model.safetensors"))
    last = state["whole"]
    assert any(not torch.equal(start[k], last[f"model.{k}"]) for k in start)  # it did train


def test_scst_cli_refuses_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(
        [
            "scst",
            "--model",
            str(tmp_path / "nope"),
            "--manifest",
            "m.json",
            "--features",
            "f",
            "--out",
            str(tmp_path / "o"),
            "--samples",
            "1",
        ]
    )
    assert code == 2
    assert "at least 2 samples" in capsys.readouterr().err
