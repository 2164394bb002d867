"""Scan-like views of an image for the document-type classifier (PIL in, PIL out).

The classifier runs before denoising, on whatever the scanner produced, so it trains on views
that look like real scans: random crops, flips, JPEG re-compression, blur, and the sensor
noise of ``denoise/corruption.py``. Every view is a pure function of (image content, view
seed), so feature extraction can be resumed, sharded or run in workers and still give the
same features.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from captioner.denoise.corruption import gaussian, jpeg


def _rng(image: Image.Image, *salt: int) -> np.random.Generator:
    return np.random.default_rng([zlib.crc32(image.tobytes()), *salt])


def add_gaussian_noise(image: Image.Image, sigma: float, seed: int = 0) -> Image.Image:
    """The image with white Gaussian noise of ``sigma`` (0-255 scale) at its own resolution."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    noisy = gaussian(pixels, sigma, _rng(image, seed))
    return Image.fromarray(np.rint(noisy * 255.0).astype(np.uint8), mode="RGB")


@dataclass(frozen=True)
class NoiseView:
    """Fixed Gaussian noise of ``sigma``: how the classifier is evaluated on noisy scans."""

    sigma: float = 25.0
    seed: int = 0

    def __call__(self, image: Image.Image) -> Image.Image:
        return add_gaussian_noise(image, self.sigma, self.seed)


@dataclass(frozen=True)
class ScanAugment:
    """One random scan-like view; ``view`` picks which (view 0 of seed 0 differs from view 1)."""

    view: int
    seed: int = 0
    min_crop: float = 0.6  # smallest crop side, as a fraction of the image side
    flip: bool = True
    noise_p: float = 0.6
    sigma: tuple[float, float] = (5.0, 50.0)
    jpeg_p: float = 0.3
    jpeg_quality: tuple[int, int] = (20, 90)
    blur_p: float = 0.25
    blur_radius: tuple[float, float] = (0.3, 1.5)

    def __call__(self, image: Image.Image) -> Image.Image:
        rng = _rng(image, self.seed, self.view)
        image = image.convert("RGB")
        width, height = image.size
        side = rng.uniform(self.min_crop, 1.0)
        w, h = max(1, round(width * side)), max(1, round(height * side))
        left = int(rng.integers(0, width - w + 1))
        top = int(rng.integers(0, height - h + 1))
        image = image.crop((left, top, left + w, top + h))
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < self.blur_p:
            image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(*self.blur_radius))))
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        if rng.random() < self.jpeg_p:
            quality = int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
            pixels = jpeg(pixels, quality)
        if rng.random() < self.noise_p:
            pixels = gaussian(pixels, float(rng.uniform(*self.sigma)), rng)
        return Image.fromarray(np.rint(pixels * 255.0).astype(np.uint8), mode="RGB")
