"""Pooled backbone features of labelled images, one resumable cache per view.

The classifier's head reads the backbone's feature grid averaged over its regions (mean and
standard deviation per channel were tried: no better on unseen sources). The grid is the one
the captioner reads,
so the chain can classify an image from the grid it computes for captioning anyway
(:func:`pool_grid`). Views (clean, scan-augmented, noisy) are cached with
``features.extract.extract_split``: resumable, bad images recorded as failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor, nn

from captioner.features.cache import OK, FeatureCache
from captioner.features.extract import ExtractReport, extract_split
from captioner.vision.backbones import Backbone

POOLING = "mean"


def pool_grid(grid: Tensor) -> Tensor:
    """``[B, R, C]`` grid -> ``[B, C]``: the per-channel mean over regions."""
    return grid.float().mean(dim=1)


class _PoolTrunk(nn.Module):
    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, images: Tensor) -> Tensor:
        grid = self.trunk(images).flatten(2).transpose(1, 2)
        return pool_grid(grid)[:, :, None, None]  # Backbone.forward makes it [B, 1, C]


def pooled_backbone(backbone: Backbone) -> Backbone:
    """The same network returning ``[B, 1, C]`` pooled features instead of its grid."""
    return Backbone(
        backbone.name,
        _PoolTrunk(backbone.trunk),
        backbone.channels,
        (1, 1),
        backbone.preprocessing,
        backbone.weights_id,
    )


@dataclass
class ViewFeatures:
    """Pooled features of one view: ``features[i]`` for ``keys[i]``; failed rows are NaN."""

    name: str
    keys: list[str]
    features: np.ndarray  # float32 [N, C]
    failed: dict[str, str]
    report: ExtractReport

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.features).any(axis=1)


def extract_view(
    paths: list[str],
    folder: Path,
    pooled: Backbone,
    name: str,
    transform: Callable[[Image.Image], Image.Image] | None,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str = "cpu",
    progress: bool = True,
) -> ViewFeatures:
    """Features of ``paths`` seen through ``transform`` (None: the image as it is)."""
    report = extract_split(
        [(p, Path(p)) for p in paths],
        folder / name,
        pooled,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        image_transform=transform,
        progress=progress,
        extra_header={"image_transform": repr(transform), "pooling": POOLING},
    )
    cache = FeatureCache.open(folder / name)
    array = np.full((len(cache), cache.array.shape[2]), np.nan, dtype=np.float32)
    ok = cache.status == OK
    array[ok] = np.asarray(cache.array[ok, 0], dtype=np.float32)
    return ViewFeatures(name, cache.keys, array, report.failed, report)
