"""What model 1 reads of an image, and its resumable caches of labelled images, one per view.

The classifier's head reads the backbone's feature grid averaged over its regions (mean and
standard deviation of the final grid were tried: no better on unseen sources), and, when its
config names ``style_blocks``, the per-channel mean and standard deviation of those inner
blocks' maps: AdaIN's description of an image's style, which is what tells a painting from a
photo of the same object. The grid is the one the captioner reads, and the inner maps are
computed on the way to it, so the chain can classify an image from the pass it makes for
captioning anyway (:func:`pool_grid`, :class:`StyleTaps`). Views (clean, scan-augmented,
noisy) are cached with ``features.extract.extract_split``: resumable, bad images recorded as
failed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from captioner.errors import CaptionerError
from captioner.features.cache import OK, FeatureCache
from captioner.features.extract import ExtractReport, extract_split
from captioner.vision.backbones import Backbone
from captioner.vision.blocks import trunk_blocks

POOLING = "mean"
#: ``--style-blocks auto``: the last block of each stage, from the 56x56 one to the 7x7 one
#: (MobileNetV2 blocks 3, 6, 10, 13, 16: 24, 32, 64, 96 and 160 channels, 752 statistics).
AUTO_STYLE_BLOCKS: dict[str, tuple[int, ...]] = {"mobilenet_v2": (3, 6, 10, 13, 16)}


def pool_grid(grid: Tensor) -> Tensor:
    """``[B, R, C]`` grid -> ``[B, C]``: the per-channel mean over regions."""
    return grid.float().mean(dim=1)


def style_statistics(maps: Tensor) -> Tensor:
    """``[B, C, H, W]`` maps -> ``[B, 2C]``: each channel's mean, then each one's std."""
    maps = maps.float()
    return torch.cat([maps.mean(dim=(2, 3)), maps.std(dim=(2, 3))], dim=1)


def describe(grid: Tensor, style: Tensor | None) -> Tensor:
    """What the head reads: the pooled grid, then the style statistics if it reads them."""
    pooled = pool_grid(grid)
    return pooled if style is None else torch.cat([pooled, style.to(pooled.device)], dim=1)


def resolve_style_blocks(setting: str, backbone: Backbone) -> list[int]:
    """``"auto"`` (the backbone's stage ends, or none where no such list is known), ``"none"``
    or comma-separated block indices -> the checked list of blocks."""
    count = len(trunk_blocks(backbone.trunk))
    if setting == "auto":
        return list(AUTO_STYLE_BLOCKS.get(backbone.name, ()))
    if setting in ("none", ""):
        return []
    try:
        blocks = [int(part) for part in setting.split(",")]
    except ValueError:
        raise CaptionerError(
            f"style blocks must be auto, none or block numbers like 3,6,10, not {setting!r}"
        ) from None
    bad = [b for b in blocks if not 0 <= b < count]
    if bad or len(set(blocks)) != len(blocks):
        raise CaptionerError(
            f"style blocks {setting!r}: {backbone.name} has blocks 0 to {count - 1}, each "
            "named once"
        )
    return sorted(blocks)


class StyleTaps:
    """While active, every forward pass of ``trunk`` records the style statistics of its
    ``blocks`` (forward hooks); :meth:`take` returns them for the images run since the last
    call, in order, over any number of passes. With no blocks it records nothing and takes
    None, so callers need no special case for a head without style statistics."""

    def __init__(self, trunk: nn.Module, blocks: Sequence[int]) -> None:
        self.blocks = list(blocks)
        self.modules = [trunk_blocks(trunk)[b] for b in self.blocks] if self.blocks else []
        self.handles: list[Any] = []
        self.seen: list[list[Tensor]] = [[] for _ in self.blocks]

    def __enter__(self) -> StyleTaps:
        for k, module in enumerate(self.modules):
            self.handles.append(module.register_forward_hook(self._hook(k)))
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _hook(self, k: int) -> Callable[[nn.Module, Any, Tensor], None]:
        def record(module: nn.Module, inputs: Any, output: Tensor) -> None:
            self.seen[k].append(style_statistics(output))

        return record

    def take(self) -> Tensor | None:
        if not self.blocks:
            return None
        if not self.seen[0]:
            raise CaptionerError("no backbone pass was recorded for the style statistics")
        style = torch.cat([torch.cat(parts) for parts in self.seen], dim=1)
        self.seen = [[] for _ in self.blocks]
        return style


def style_channels(backbone: Backbone, blocks: Sequence[int]) -> int:
    """How many style statistics ``blocks`` give (two per channel of each block's output)."""
    if not blocks:
        return 0
    size = backbone.preprocessing.image_size
    was_training = backbone.training
    with torch.inference_mode(), StyleTaps(backbone.trunk, blocks) as taps:
        backbone.eval()(torch.zeros(1, 3, size, size))
        style = taps.take()
    backbone.train(was_training)
    assert style is not None
    return int(style.shape[1])


class _DescribeTrunk(nn.Module):
    def __init__(self, trunk: nn.Module, blocks: Sequence[int]) -> None:
        super().__init__()
        self.trunk = trunk
        self.blocks = list(blocks)

    def forward(self, images: Tensor) -> Tensor:
        with StyleTaps(self.trunk, self.blocks) as taps:
            grid = self.trunk(images).flatten(2).transpose(1, 2)
        # Backbone.forward makes [B, D, 1, 1] into [B, 1, D]
        return describe(grid, taps.take())[:, :, None, None]


def pooled_backbone(backbone: Backbone, style_blocks: Sequence[int] = ()) -> Backbone:
    """The same network returning ``[B, 1, D]``, what the head reads (:func:`describe`),
    instead of its grid: the pooled features, then ``style_blocks``' statistics."""
    extra = style_channels(backbone, style_blocks)
    return Backbone(
        backbone.name,
        _DescribeTrunk(backbone.trunk, style_blocks),
        backbone.channels + extra,
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
    style_blocks: Sequence[int] = (),
) -> ViewFeatures:
    """Features of ``paths`` seen through ``transform`` (None: the image as it is);
    ``style_blocks``: those ``pooled`` appends (recorded in the cache's header)."""
    style_header = {"style_blocks": list(style_blocks)} if style_blocks else {}
    report = extract_split(
        [(p, Path(p)) for p in paths],
        folder / name,
        pooled,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        image_transform=transform,
        progress=progress,
        extra_header={"image_transform": repr(transform), "pooling": POOLING, **style_header},
    )
    cache = FeatureCache.open(folder / name)
    array = np.full((len(cache), cache.array.shape[2]), np.nan, dtype=np.float32)
    ok = cache.status == OK
    array[ok] = np.asarray(cache.array[ok, 0], dtype=np.float32)
    return ViewFeatures(name, cache.keys, array, report.failed, report)
