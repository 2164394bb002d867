"""Training end to end on synthetic features: overfitting, early stopping, resume, round trip."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import CAPTIONS, write_tiny_dataset

from captioner.caption.captioner import Captioner
from captioner.caption.config import DecoderShape
from captioner.caption.decode_settings import DecodeSettings
from captioner.errors import CaptionerError, CheckpointError
from captioner.features.cache import FeatureCache
from captioner.training.config import SHAPE_FIELDS, TrainConfig
from captioner.training.trainer import train


def tiny_config(root: Path, **kw) -> TrainConfig:
    manifest, features, _ = write_tiny_dataset(root)
    settings = dict(
        manifest=str(manifest),
        features=str(features),
        out=str(root / "run"),
        epochs=60,
        batch_size=6,
        learning_rate=1e-2,
        patience=100,
        progress=False,
        device="cpu",
    )
    shape = dict(encoder_dim=32, embed_dim=16, attention_dim=32, hidden_dim=64)
    shape.update({k: kw.pop(k) for k in list(kw) if k in SHAPE_FIELDS})
    settings.update(kw, model=DecoderShape(**shape))
    return TrainConfig(**settings)


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("overfit")
    config = tiny_config(root)
    return root, config, train(config)


def test_loss_falls_and_greedy_and_beam_recover_the_training_captions(overfit_run) -> None:
    root, _, result = overfit_run
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.1 * losses[0]
    captioner = Captioner.from_pretrained(result.model_dir, backbone_weights=None)
    cache = FeatureCache.open(root / "features" / "train")
    feats = np.stack([cache.features(i) for i in range(len(CAPTIONS))])
    for decode in (DecodeSettings(beam_size=1), DecodeSettings(beam_size=3)):
        got = [r.caption for r in captioner.caption_features(feats, decode)]
        assert got == CAPTIONS


def test_run_folder_has_config_vocab_curve_tensorboard_and_history(overfit_run) -> None:
    root, config, result = overfit_run
    run = Path(config.out)
    assert json.loads((run / "train_config.json").read_text())["model"]["hidden_dim"] == 64
    assert (run / "vocab.json").is_file() and (run / "loss_curve.png").stat().st_size > 1000
    assert any((run / "tensorboard").iterdir())
    history = json.loads((run / "history.json").read_text())
    assert len(history) == result.epochs_run and "val_loss" in history[0]


def test_checkpoint_round_trip_gives_identical_captions(overfit_run, tmp_path: Path) -> None:
    root, _, result = overfit_run
    first = Captioner.from_pretrained(result.model_dir, backbone_weights=None)
    first.save_pretrained(tmp_path / "copy")
    second = Captioner.from_pretrained(tmp_path / "copy", backbone_weights=None)
    feats = torch.randn(5, 4, 8)
    for decode in (DecodeSettings(beam_size=1), DecodeSettings(beam_size=4)):
        a = first.caption_features(feats, decode)
        b = second.caption_features(feats, decode)
        assert [r.caption for r in a] == [r.caption for r in b]
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.attention, y.attention)


def test_wrong_or_foreign_checkpoints_are_refused(overfit_run, tmp_path: Path) -> None:
    _, _, result = overfit_run
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(result.model_dir, bad)
    # a pickle renamed to .safetensors: refused, never unpickled
    (bad / "model.safetensors").write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    with pytest.raises(CheckpointError, match="checksum|safetensors"):
        Captioner.from_pretrained(bad, backbone_weights=None)
    # another vocabulary
    shutil.rmtree(bad)
    shutil.copytree(result.model_dir, bad)
    vocab = json.loads((bad / "vocab.json").read_text())
    vocab_tokens = vocab["tokens"] if isinstance(vocab, dict) else vocab
    vocab_tokens[-1] = "zebra"
    (bad / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match="vocabulary"):
        Captioner.from_pretrained(bad, backbone_weights=None)
    with pytest.raises(CheckpointError):
        Captioner.from_pretrained(tmp_path / "nowhere", backbone_weights=None)


def test_early_stopping_restores_the_best_epoch(tmp_path: Path) -> None:
    # A huge learning rate makes validation loss rise after the first epochs.
    config = tiny_config(tmp_path, epochs=30, patience=2, learning_rate=0.5)
    result = train(config)
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_epoch == best["epoch"]
    assert result.stopped_early and result.epochs_run == result.best_epoch + 2
    info = json.loads((result.model_dir / "config.json").read_text())["info"]
    assert info["epoch"] == result.best_epoch


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    full = train(tiny_config(tmp_path / "a", epochs=6, dropout=0.2))
    part = tiny_config(tmp_path / "b", epochs=3, dropout=0.2)
    train(part)
    with pytest.raises(CaptionerError, match="--resume"):
        train(part)
    other = dataclasses.replace(
        part, epochs=6, model=dataclasses.replace(part.model, dropout=0.3), learning_rate=0.5
    )
    with pytest.raises(CaptionerError, match=r"model\.dropout: 0\.2 then, 0\.3 now; learning_rate"):
        train(other, resume=True)
    part.epochs = 6
    resumed = train(part, resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    recorded = json.loads((Path(part.out) / "train_config.json").read_text())
    assert recorded["epochs"] == 6 and recorded["model"]["dropout"] == 0.2
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    from safetensors.torch import load_file

    wa = load_file(str(full.model_dir / "model.safetensors"))
    wb = load_file(str(resumed.model_dir / "model.safetensors"))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key])


def test_selection_on_cider_decodes_validation_and_keeps_the_best_metric_epoch(
    tmp_path: Path,
) -> None:
    config = tiny_config(tmp_path, epochs=8, select_on="CIDEr", patience=100)
    result = train(config)
    assert result.select_on == "CIDEr"
    cider = [h["val_CIDEr"] for h in result.history]
    assert all("val_BLEU-4" in h for h in result.history)
    best = max(range(len(cider)), key=lambda i: (cider[i], -i))
    assert result.best_epoch == result.history[best]["epoch"]
    assert result.best_score == pytest.approx(cider[best])
    info = json.loads((result.model_dir / "config.json").read_text())["info"]
    assert info["select_on"] == "CIDEr" and info["val_scores"]["CIDEr"] == pytest.approx(
        cider[best]
    )


def test_atomic_writes_leave_readable_files_and_no_temporaries(tmp_path: Path) -> None:
    from captioner.fileio import atomic_write_json

    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_writes_remove_temporaries_left_by_killed_processes(tmp_path: Path) -> None:
    from captioner.fileio import atomic_write_json

    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    dead = int(ended.stdout)
    orphan = tmp_path / f".a.json.{dead}.x1y2.tmp"  # a writer killed mid-write
    live = tmp_path / f".a.json.{os.getppid()}.x1y2.tmp"  # maybe being written right now
    other = tmp_path / f".b.json.{dead}.x1y2.tmp"  # another file's: left to its own writes
    for leftover in (orphan, live, other):
        leftover.write_text("{half")
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["a.json", live.name, other.name])
