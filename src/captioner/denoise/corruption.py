"""Synthetic corruptions of clean pictures, generated on the fly from a seeded generator.

Pictures are float32 arrays ``[H, W, C]`` in ``[0, 1]``. Every corruption ends by clipping to
``[0, 1]`` and rounding to 8-bit steps, because the noisy photos a user gives us are 8-bit.

Default training mix (:data:`DEFAULT_MIX`), one corruption per crop:

| kind | weight | strength |
|---|---|---|
| Gaussian | 0.65 | sigma uniform in [5, 55] (on the 0-255 scale), independent per channel |
| JPEG | 0.10 | quality uniform in [10, 50] |
| salt-and-pepper | 0.10 | 0.5% to 5% of the pixels set to black or white |
| speckle | 0.10 | ``x + x * n``, n Gaussian with sigma uniform in [0.05, 0.25] |
| none | 0.05 | the clean crop (so clean photos pass through unharmed) |
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

KINDS = ("gaussian", "jpeg", "salt_pepper", "speckle", "none")


def quantize(picture: np.ndarray) -> np.ndarray:
    """Clip to [0, 1] and round to the 256 levels of an 8-bit image."""
    return (np.rint(np.clip(picture, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def gaussian(picture: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise; ``sigma`` on the 0-255 scale."""
    noise = rng.standard_normal(picture.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return quantize(picture + noise)


def salt_and_pepper(picture: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Set a fraction ``amount`` of the pixels (all channels) to black or white."""
    out = picture.copy()
    hit = rng.random(picture.shape[:2]) < amount
    white = rng.random(picture.shape[:2]) < 0.5
    out[hit & white] = 1.0
    out[hit & ~white] = 0.0
    return quantize(out)


def speckle(picture: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise ``x + x * n`` with ``n ~ N(0, sigma)``."""
    noise = rng.standard_normal(picture.shape, dtype=np.float32) * np.float32(sigma)
    return quantize(picture + picture * noise)


def jpeg(picture: np.ndarray, quality: int) -> np.ndarray:
    """Round-trip through JPEG at ``quality`` (blocking and ringing artefacts)."""
    pixels = np.rint(np.clip(picture, 0.0, 1.0) * 255.0).astype(np.uint8)
    mode = "L" if pixels.shape[2] == 1 else "RGB"
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(2) if mode == "L" else pixels, mode=mode).save(
        buffer, format="JPEG", quality=int(quality)
    )
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert(mode), dtype=np.float32) / 255.0
    return decoded.reshape(picture.shape)


@dataclass(frozen=True)
class CorruptionMix:
    """Which corruptions to draw, how often, and how strong."""

    weights: dict[str, float] = field(
        default_factory=lambda: {
            "gaussian": 0.65,
            "jpeg": 0.10,
            "salt_pepper": 0.10,
            "speckle": 0.10,
            "none": 0.05,
        }
    )
    sigma: tuple[float, float] = (5.0, 55.0)
    jpeg_quality: tuple[int, int] = (10, 50)
    salt_pepper: tuple[float, float] = (0.005, 0.05)
    speckle: tuple[float, float] = (0.05, 0.25)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown corruption(s) {unknown}; known: {', '.join(KINDS)}")
        if any(w < 0 for w in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ValueError(f"corruption weights must be >= 0 with a positive sum: {self.weights}")

    @classmethod
    def parse(cls, text: str, sigma: tuple[float, float] | None = None) -> CorruptionMix:
        """Read ``"gaussian=0.7,jpeg=0.1,salt_pepper=0.1,speckle=0.1"`` (a bare name = 1)."""
        weights: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            try:
                weights[name.strip().replace("-", "_")] = float(value) if value else 1.0
            except ValueError:
                raise ValueError(f"bad corruption weight {part!r}") from None
        return cls(weights=weights, sigma=sigma or cls.sigma)

    def describe(self) -> dict[str, object]:
        return {
            "weights": dict(self.weights),
            "sigma": list(self.sigma),
            "jpeg_quality": list(self.jpeg_quality),
            "salt_pepper": list(self.salt_pepper),
            "speckle": list(self.speckle),
        }

    def apply(self, picture: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """Draw one corruption and apply it; return the noisy picture and a short label."""
        names = list(self.weights)
        p = np.asarray([self.weights[n] for n in names], dtype=np.float64)
        kind = names[int(rng.choice(len(names), p=p / p.sum()))]
        if kind == "gaussian":
            sigma = float(rng.uniform(*self.sigma))
            return gaussian(picture, sigma, rng), f"gaussian {sigma:.1f}"
        if kind == "jpeg":
            quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            return jpeg(picture, quality), f"jpeg {quality}"
        if kind == "salt_pepper":
            amount = float(rng.uniform(*self.salt_pepper))
            return salt_and_pepper(picture, amount, rng), f"salt_pepper {amount:.3f}"
        if kind == "speckle":
            sigma = float(rng.uniform(*self.speckle))
            return speckle(picture, sigma, rng), f"speckle {sigma:.2f}"
        return quantize(picture), "none"


DEFAULT_MIX = CorruptionMix()
