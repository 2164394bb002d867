"""A guard on the denoiser's training recipe: a short seeded run of the defaults must learn.

The old recipe (plain ReLU U-Net, Adam 3e-3) lost most of its channels to dead ReLUs and,
depending on float rounding, stalled 1.4 dB short on real photos. In this short run it reaches
about 21.4 dB where the default recipe reaches about 24.9 dB (26.0 with the earlier default
rate, 3e-3; sigma 25 on real photo crops); the floor sits between, far enough from both that
neither seed noise nor thread count moves a run across it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from denoise_tiny import one_thread  # noqa: F401
from doctype_tiny import photo

from captioner.training.denoiser import train_denoiser
from captioner.training.denoiser_config import DenoiseTrainConfig

FLOOR_DB = 23.5  # sigma 25 validation PSNR after 180 steps; the noisy input is ~20.3 dB


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(120):  # crops of scikit-image's real photos; 4 land in the val bucket
        photo(i, (128, 128)).save(folder / f"photo_{i:03d}.png")
    return folder


def _short_run(images: Path, out: Path, **recipe: Any) -> float:
    model = recipe.pop("model", {})
    config = DenoiseTrainConfig(
        images=str(images), out=str(out), epochs=3, steps_per_epoch=60, batch_size=8,
        patch_size=64, val_images=8, warmup_steps=18, progress=False, seed=0, **recipe,
    )  # fmt: skip
    config.model.update(model)
    result = train_denoiser(config)
    return float(result.history[-1]["val_sigma25_psnr"])


def test_the_default_recipe_learns_past_the_floor(photos: Path, tmp_path: Path) -> None:
    assert _short_run(photos, tmp_path / "default") > FLOOR_DB


def test_the_floor_catches_the_recipe_that_stalled(photos: Path, tmp_path: Path) -> None:
    old = {"model": {"activation": "relu", "residual": False}, "ema_decay": 0.0}
    assert _short_run(photos, tmp_path / "old", learning_rate=3e-3, **old) < FLOOR_DB
