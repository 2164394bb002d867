"""`denoise train`: held-out split by name, PSNR/SSIM history, checkpoints and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from denoise_tiny import one_thread, write_images  # noqa: F401

from captioner.cli import main
from captioner.denoise import load_denoiser
from captioner.denoise.data import split_of

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
