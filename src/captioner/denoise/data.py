"""Clean training pictures: a stable split by file name, loading, and random noisy crops.

Each image goes to ``train``, ``val`` or ``test`` by a hash of its file name (not of its
content, not of the run's seed), so every run and every benchmark agrees on which pictures are
held out: ``test`` (1 in 20) is never trained on and is what ``bench/denoise.py`` measures,
``val`` (1 in 20) drives early stopping, the rest is ``train``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from captioner.denoise.corruption import CorruptionMix, gaussian, quantize
from captioner.errors import CaptionerError, ImageLoadError
from captioner.runlog import Progress
from captioner.vision.images import IMAGE_SUFFIXES, load_image

BUCKETS = 20


def split_of(name: str) -> str:
    """``train``, ``val`` or ``test`` for an image file name (stable across runs)."""
    bucket = int(hashlib.sha1(Path(name).name.encode("utf-8")).hexdigest()[:8], 16) % BUCKETS
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder`` (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptionerError(f"{folder}: not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CaptionerError(f"{folder}: no image files in this folder")
    return files


def split_images(files: Iterable[Path], split: str) -> list[Path]:
    return [f for f in files if split_of(f.name) == split]


def load_pictures(
    files: list[Path], min_size: int = 0, progress: bool = False, desc: str = "images"
) -> tuple[list[np.ndarray], list[str]]:
    """Decode images to uint8 ``[H, W, 3]`` arrays; skip unreadable or too small ones."""
    pictures: list[np.ndarray] = []
    skipped: list[str] = []
    for path in Progress(files, desc=desc, unit="img", disable=not progress, dynamic_ncols=True):
        try:
            array = np.asarray(load_image(path), dtype=np.uint8)
        except ImageLoadError as exc:
            skipped.append(str(exc))
            continue
        if min(array.shape[:2]) < min_size:
            skipped.append(f"{path}: smaller than {min_size} px")
            continue
        pictures.append(array)
    return pictures, skipped


def random_batch(
    pictures: list[np.ndarray],
    batch_size: int,
    patch: int,
    mix: CorruptionMix,
    rng: np.random.Generator,
) -> tuple[Tensor, Tensor]:
    """Random crops (flipped/rotated) of random pictures; returns (noisy, clean) [B, 3, P, P]."""
    clean, noisy = [], []
    for index in rng.integers(0, len(pictures), size=batch_size):
        picture = pictures[int(index)]
        top = int(rng.integers(0, picture.shape[0] - patch + 1))
        left = int(rng.integers(0, picture.shape[1] - patch + 1))
        crop = picture[top : top + patch, left : left + patch].astype(np.float32) / 255.0
        crop = np.rot90(crop, k=int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.ascontiguousarray(crop)
        clean.append(crop)
        noisy.append(mix.apply(crop, rng)[0])
    return _to_tensor(noisy), _to_tensor(clean)


def validation_set(
    pictures: list[np.ndarray], mix: CorruptionMix, seed: int, crop: int = 256
) -> dict[str, tuple[Tensor, Tensor]]:
    """Fixed noisy copies of centre crops: the training mix (no 'none') and Gaussian sigma 25.

    Returns ``{"mix": (noisy, clean), "sigma25": (noisy, clean)}`` as ``[N, 3, S, S]``
    tensors: every picture is centre-cropped to the same size ``S`` (at most ``crop``).
    """
    weights = {k: v for k, v in mix.weights.items() if k != "none"} or {"gaussian": 1.0}
    noisy_mix = CorruptionMix(weights, mix.sigma, mix.jpeg_quality, mix.salt_pepper, mix.speckle)
    size = min(crop, *(min(p.shape[:2]) for p in pictures))
    clean, mixed, sigma25 = [], [], []
    for i, picture in enumerate(pictures):
        top, left = (picture.shape[0] - size) // 2, (picture.shape[1] - size) // 2
        c = quantize(picture[top : top + size, left : left + size].astype(np.float32) / 255.0)
        rng = np.random.default_rng([seed, i])
        clean.append(c)
        mixed.append(noisy_mix.apply(c, rng)[0])
        sigma25.append(gaussian(c, 25.0, rng))
    target = _to_tensor(clean)
    return {"mix": (_to_tensor(mixed), target), "sigma25": (_to_tensor(sigma25), target)}


def _to_tensor(arrays: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
