"""Builders for the denoiser tests: small pictures and a small, visibly active denoiser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.denoise.denoiser import save_denoiser
from captioner.denoise.model import DenoiserConfig, DenoiserNet

TINY = DenoiserConfig(widths=(8, 16), depths=(1, 1))


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: these tiny convolutions are slower with two on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_picture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful uint8 picture (gradients and a disc): easy to denoise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [xx / max(width - 1, 1), yy / max(height - 1, 1), 0.5 + 0.3 * np.sin(xx / 7.0)], axis=-1
    )
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.25 * min(height, width)) ** 2
    base[disc] = rng.uniform(0, 1, size=3)
    return np.rint(base * 255).astype(np.uint8)


def noisy_copy(picture: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(picture + rng.normal(0, sigma, picture.shape)), 0, 255).astype(np.uint8)


def active_denoiser(folder: Path, seed: int = 0) -> Path:
    """Save an untrained tiny denoiser whose output differs clearly from its input."""
    torch.manual_seed(seed)
    net = DenoiserNet(TINY)
    with torch.no_grad():
        net.tail.weight.normal_(0.0, 0.05)
    save_denoiser(net, folder, {"note": "untrained test denoiser"})
    return folder


def write_images(folder: Path, count: int, size: tuple[int, int] = (40, 48)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"pic_{i:03d}.png"
        Image.fromarray(smooth_picture(*size, seed=i)).save(path)
        paths.append(path)
    return paths
