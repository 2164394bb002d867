"""Synthetic corruptions: seeded, 8-bit, in range, and each one visibly changes a picture."""

from __future__ import annotations

import numpy as np
import pytest
from denoise_tiny import one_thread, smooth_picture  # noqa: F401

from captioner.denoise import corruption
from captioner.denoise.corruption import DEFAULT_MIX, CorruptionMix


@pytest.fixture
def picture() -> np.ndarray:
    return smooth_picture(32, 40).astype(np.float32) / 255.0


def _is_8bit(x: np.ndarray) -> bool:
    return bool(np.allclose(x * 255, np.rint(x * 255), atol=1e-3) and x.min() >= 0 and x.max() <= 1)


def test_each_corruption_changes_the_picture(picture: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    outputs = {
        "gaussian": corruption.gaussian(picture, 25, rng),
        "salt_pepper": corruption.salt_and_pepper(picture, 0.05, rng),
        "speckle": corruption.speckle(picture, 0.2, rng),
        "jpeg": corruption.jpeg(picture, 10),
    }
    for name, out in outputs.items():
        assert out.shape == picture.shape and out.dtype == np.float32, name
        assert _is_8bit(out), name
        assert np.abs(out - picture).mean() > 0.005, name
    noise = outputs["gaussian"] - picture
    assert 20 / 255 < noise.std() < 30 / 255
    extremes = np.isin(outputs["salt_pepper"], (0.0, 1.0)).all(axis=2).mean()
    assert 0.03 < extremes < 0.08


def test_mix_is_seeded(picture: np.ndarray) -> None:
    a = [DEFAULT_MIX.apply(picture, np.random.default_rng(3)) for _ in range(2)]
    assert a[0][1] == a[1][1] and np.array_equal(a[0][0], a[1][0])
    labels = {DEFAULT_MIX.apply(picture, np.random.default_rng(s))[1].split()[0] for s in range(60)}
    assert {"gaussian", "jpeg", "salt_pepper", "speckle"} <= labels


def test_parse_mix() -> None:
    mix = CorruptionMix.parse("gaussian=3, jpeg", sigma=(10, 20))
    assert mix.weights == {"gaussian": 3.0, "jpeg": 1.0} and mix.sigma == (10, 20)
    only = CorruptionMix.parse("gaussian", sigma=(25, 25))
    label = only.apply(np.zeros((8, 8, 3), np.float32), np.random.default_rng(0))[1]
    assert label == "gaussian 25.0"
    for bad in ("blur=1", "gaussian=x", "gaussian=0"):
        with pytest.raises(ValueError):
            CorruptionMix.parse(bad)
