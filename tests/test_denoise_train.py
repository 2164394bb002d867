"""`denoise train`: held-out split by name, PSNR/SSIM history, checkpoints and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from denoise_tiny import one_thread, write_images  # noqa: F401
from safetensors.torch import load_file

from captioner.cli import main
from captioner.denoise import load_denoiser
from captioner.denoise.data import split_of
from captioner.errors import CaptionerError
from captioner.training.denoiser import DenoiserTask, train_denoiser
from captioner.training.denoiser_config import DenoiseTrainConfig, resume_config

SMALL = ["--widths", "8,16", "--depths", "1,1", "--batch-size", "4", "--patch-size", "32"]


def test_split_by_name_is_stable_and_holds_out_test_images() -> None:
    names = [f"img_{i}.jpg" for i in range(2000)]
    splits = [split_of(n) for n in names]
    assert splits == [split_of(n) for n in names]
    assert 0.03 < splits.count("test") / len(names) < 0.07
    assert 0.03 < splits.count("val") / len(names) < 0.07
    assert split_of("a/b/img_1.jpg") == split_of("img_1.jpg")


def test_train_resume_and_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "images"
    files = write_images(images, 60)
    assert any(split_of(f.name) == "val" for f in files)
    out = tmp_path / "run"
    args = ["denoise", "train", "--images", str(images), "--out", str(out), *SMALL]
    args += ["--epochs", "2", "--steps-per-epoch", "3", "--val-images", "4", "--no-progress"]
    assert main(args) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert {"val_psnr", "val_ssim", "val_sigma25_psnr", "val_sigma25_ssim"} <= set(history[0])
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["training"]["epochs_run"] == 2
    assert config["training"]["corruption"]["weights"]["gaussian"] == 0.65
    assert (out / "checkpoint" / "state.safetensors").is_file()
    first = load_denoiser(out).weights_id

    assert main(args) == 2  # a second run into the same folder needs --resume
    assert "--resume" in capsys.readouterr().err
    resume = ["denoise", "train", "--out", str(out), "--resume", "--epochs", "3", "--no-progress"]
    assert main(resume) == 0
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert load_denoiser(out / "model").weights_id  # still loadable; may or may not differ
    assert isinstance(first, str)


def test_too_few_images_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = tmp_path / "few"
    write_images(images, 2)
    args = ["denoise", "train", "--images", str(images), "--out", str(tmp_path / "r"), *SMALL]
    assert main([*args, "--no-progress"]) == 2
    assert "too few images" in capsys.readouterr().err


def _tiny_config(images: Path, out: Path, **changes: object) -> DenoiseTrainConfig:
    settings: dict[str, object] = {
        "epochs": 3, "steps_per_epoch": 4, "batch_size": 4, "patch_size": 32, "val_images": 4,
        "progress": False, **changes,
    }  # fmt: skip
    config = DenoiseTrainConfig(images=str(images), out=str(out), **settings)  # type: ignore[arg-type]
    config.model.update(widths=[8, 16], depths=[1, 1])
    return config


@pytest.mark.parametrize(
    ("ema_decay", "gain_lr_factor", "deep_supervision"),
    [(0.9, 1.0, 0.0), (0.0, 10.0, 0.0), (0.0, 1.0, 0.5)],
)
def test_resume_after_a_kill_gives_the_uninterrupted_model(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ema_decay: float,
    gain_lr_factor: float,
    deep_supervision: float,
) -> None:
    images = tmp_path / "images"
    write_images(images, 60)
    settings = {
        "ema_decay": ema_decay,
        "gain_lr_factor": gain_lr_factor,
        "deep_supervision": deep_supervision,
    }
    whole = train_denoiser(_tiny_config(images, tmp_path / "whole", **settings))
    assert whole.epochs_run == 3

    import captioner.training.denoiser as train_module

    real_evaluate = train_module.score_denoiser
    calls = {"n": 0}

    def killed_in_epoch_3(*args: object, **kwargs: object) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process dies before epoch 3 is recorded
        return real_evaluate(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "score_denoiser", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_denoiser(_tiny_config(images, tmp_path / "killed", **settings))
    monkeypatch.setattr(train_module, "score_denoiser", real_evaluate)
    resumed = train_denoiser(resume_config(tmp_path / "killed", progress=False), resume=True)
    assert resumed.epochs_run == 3
    timing = ("seconds", "elapsed")
    strip = [{k: v for k, v in h.items() if k not in timing} for h in resumed.history]
    assert strip == [{k: v for k, v in h.items() if k not in timing} for h in whole.history]
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if deep_supervision:  # the heads train and are kept in the state, not in the model
        state = load_file(str(tmp_path / "killed" / "checkpoint" / "state.safetensors"))
        heads = [v for k, v in state.items() if k.startswith("model.heads.")]
        assert heads and any(v.abs().sum() > 0 for v in heads)
        assert not any("heads" in k for k in a)
    if ema_decay:  # the saved model is the average, not the last step's weights
        state = load_file(str(tmp_path / "killed" / "checkpoint" / "state.safetensors"))
        last = {k[len("model.net.") :]: v for k, v in state.items() if k.startswith("model.net.")}
        assert any(not torch.equal(last[k], a[k]) for k in a)


def test_residual_gains_train_at_their_own_rate_and_adam_takes_its_epsilon(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_images(images, 60)
    task = DenoiserTask(_tiny_config(images, tmp_path / "r", gain_lr_factor=10.0))
    rest, gains = task.optimizer.param_groups
    assert gains["params"] and all(p.ndim == 0 for p in gains["params"])  # the scalar gains
    assert not any(p.ndim == 0 for p in rest["params"])
    for _ in range(3):  # the schedule keeps the ratio
        task.scheduler.step()
        assert gains["lr"] == pytest.approx(10.0 * rest["lr"])
    same = DenoiserTask(_tiny_config(images, tmp_path / "s", adam_eps=1e-12))
    assert len(same.optimizer.param_groups) == 1  # the layout of earlier runs' checkpoints
    assert same.optimizer.param_groups[0]["eps"] == 1e-12
    with pytest.raises(CaptionerError, match="gain-lr-factor"):
        _tiny_config(images, tmp_path / "bad", gain_lr_factor=0.0).check()


def test_runs_saved_before_the_average_resume_without_one(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_images(images, 60)
    out = tmp_path / "old"
    config = _tiny_config(images, out, ema_decay=0.0, epochs=1)
    train_denoiser(config)
    saved = json.loads((out / "train_config.json").read_text())
    del saved["ema_decay"]  # as written by earlier versions
    (out / "train_config.json").write_text(json.dumps(saved))
    resumed = train_denoiser(resume_config(out, epochs=2, progress=False), resume=True)
    assert resumed.epochs_run == 2


def test_deep_supervision_scores_each_level_against_the_pooled_clean_picture() -> None:
    from captioner.denoise.model import DenoiserConfig, DenoiserNet
    from captioner.training.deep_supervision import LevelHeads

    torch.manual_seed(0)
    net = DenoiserNet(DenoiserConfig(widths=(8, 16, 32), depths=(1, 1, 1)))
    heads = LevelHeads(net)
    clean = torch.rand(2, 3, 32, 32)
    noisy = clean + 0.1 * torch.randn_like(clean)
    _, levels = net.forward_levels(noisy)
    assert [f.shape[1:] for f in levels] == [(16, 8, 8), (32, 4, 4)]
    pooled = [(F.avg_pool2d(noisy, s), F.avg_pool2d(clean, s)) for s in (4, 8)]
    untrained = sum(F.l1_loss(n, c) for n, c in pooled) / 2
    assert float(heads.loss(levels, noisy, clean)) == pytest.approx(float(untrained))
    # heads that read each level's exact pooled noise leave no loss
    exact = []
    for head, features, (n, c) in zip(heads.heads, levels, pooled, strict=True):
        with torch.no_grad():
            head.weight.zero_()
            head.weight[:, :3, 0, 0] = torch.eye(3)
        exact.append(torch.cat([n - c, features[:, 3:]], dim=1))
    assert float(heads.loss(exact, noisy, clean)) < 1e-6
    with pytest.raises(ValueError, match="multiples"):
        net.forward_levels(noisy[..., :30, :30])
