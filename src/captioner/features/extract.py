"""Run a backbone over the images of a split and fill its feature cache (resumable).

Only items not yet done are processed; bad images are recorded as failed instead of stopping
the run; the cache is flushed every few batches, so a killed run loses at most those batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from captioner.errors import CacheMismatchError, CaptionerError
from captioner.features.cache import FAILED, OK, PENDING, FeatureCache
from captioner.features.sharded import (
    RankCache,
    finish_shared,
    merge_rank_shards,
    open_shared,
)
from captioner.runlog import Progress
from captioner.runtime import distributed
from captioner.vision.backbones import Backbone, load_backbone
from captioner.vision.blocks import split_backbone
from captioner.vision.images import load_image
from captioner.vision.views import ViewTransform, view_folder

if TYPE_CHECKING:
    from captioner.data.manifest import Manifest

ImageTransform = Callable[[Image.Image], Image.Image]
_Item = tuple[int, Tensor | None, str]


@dataclass
class ExtractReport:
    """What one extraction run did to a split's cache."""

    folder: Path
    total: int
    extracted_now: int
    already_done: int
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.extracted_now / self.seconds if self.seconds > 0 else 0.0


class _ImageDataset(Dataset[_Item]):
    """Decodes and preprocesses images; a bad image yields ``(index, None, problem)``."""

    def __init__(
        self,
        items: list[tuple[int, Path]],
        transform: Callable[[Image.Image], Tensor],
        image_transform: ImageTransform | None,
    ) -> None:
        self.items = items
        self.transform = transform
        self.image_transform = image_transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> _Item:
        index, path = self.items[j]
        try:
            image = load_image(path)
            if self.image_transform is not None:
                image = self.image_transform(image)
            return index, self.transform(image), ""
        except CaptionerError as exc:
            return index, None, getattr(exc, "problem", str(exc))


def _collate(items: list[_Item]) -> tuple[list[int], Tensor | None, list[tuple[int, str]]]:
    good = [(i, t) for i, t, _ in items if t is not None]
    bad = [(i, problem) for i, t, problem in items if t is None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], batch, bad


def extract_split(
    records: list[tuple[str, Path]],
    out_folder: str | Path,
    backbone: Backbone,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str = "cpu",
    image_transform: ImageTransform | None = None,
    progress: bool = True,
    *,
    flush_every: int = 20,
    retry_failed: bool = False,
    extra_header: dict[str, Any] | None = None,
) -> ExtractReport:
    """Extract features of ``records`` (key, image path) into the cache at ``out_folder``.

    ``extra_header`` (e.g. ``{"image_transform": "denoiser-<sha>"}``) is stored in the cache
    header and must match on resume. ``retry_failed`` re-tries items that failed before.
    """
    out_folder = Path(out_folder)
    keys = [key for key, _ in records]
    # "image_transform" is always recorded (None without one), so a cache of plain images and
    # a cache of denoised ones can never be resumed into each other.
    header = {**backbone.header(), "image_transform": None, **(extra_header or {})}
    # Under torchrun each rank extracts the rows i % world_size == rank (features/sharded.py).
    ctx = distributed.current()
    if ctx.enabled:
        cache = open_shared(out_folder, header, keys, ctx, _open_or_create)
    else:
        cache = _open_or_create(out_folder, header, keys)
    if retry_failed:
        cache.reset_failed()
    status = cache.status
    already_done = int((status == OK).sum())
    if isinstance(cache, RankCache):
        rows = cache.pending_rows()
    else:
        rows = np.flatnonzero(status == PENDING)
    todo = [(i, Path(records[i][1])) for i in rows.tolist()]
    started = time.perf_counter()
    done_now = _run(
        cache,
        todo,
        backbone,
        batch_size,
        num_workers,
        device,
        image_transform,
        progress and ctx.is_main,
        flush_every,
    )
    if isinstance(cache, RankCache):
        cache, done_now = finish_shared(cache, done_now, ctx, device)
    failures = cache.failures()
    failed_keys = [cache.keys[i] for i in np.flatnonzero(cache.status == FAILED).tolist()]
    return ExtractReport(
        folder=out_folder,
        total=len(cache),
        extracted_now=done_now,
        already_done=already_done,
        failed={key: failures.get(key, "unknown problem") for key in failed_keys},
        seconds=time.perf_counter() - started,
    )


def _open_or_create(folder: Path, header: dict[str, Any], keys: list[str]) -> FeatureCache:
    if not (folder / "header.json").exists():
        return FeatureCache.create(folder, header, keys)
    merge_rank_shards(folder)  # progress left by a killed sharded run
    cache = FeatureCache.open(folder, expected=header, writable=True)
    if cache.keys != keys:
        pairs = zip(cache.keys, keys, strict=False)
        differ = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(cache), len(keys)))
        raise CacheMismatchError(
            f"{folder}: this cache holds features of another image list ({len(cache.keys)} "
            f"images, {len(keys)} requested, first difference at position {differ}); "
            "pass a new --out folder or delete this one"
        )
    return cache


def _run(
    cache: FeatureCache,
    todo: list[tuple[int, Path]],
    backbone: Backbone,
    batch_size: int,
    num_workers: int,
    device: str,
    image_transform: ImageTransform | None,
    progress: bool,
    flush_every: int,
) -> int:
    if not todo:
        return 0
    loader = DataLoader(
        _ImageDataset(todo, backbone.transform, image_transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.startswith("cuda"),
    )
    # Channels-last (NHWC) convolutions: 1.4-1.8x the forward throughput on CPU with the same
    # features up to float rounding (docs/BENCHMARKS.md, feature extraction).
    model = backbone.to(device, memory_format=torch.channels_last)
    done = 0
    bar = Progress(
        total=len(todo),
        unit="img",
        desc=f"features {cache.folder.name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        with torch.inference_mode():
            for batches, (indices, batch, bad) in enumerate(loader, start=1):
                for index, problem in bad:
                    cache.mark_failed(cache.keys[index], problem)
                if batch is not None:
                    pixels = batch.to(device, non_blocking=True)
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
                    feats = model(pixels).to(torch.float16)
                    cache.write(indices, feats.cpu().numpy())
                    done += len(indices)
                bar.update(len(indices) + len(bad))
                if batches % flush_every == 0:
                    cache.flush()
    finally:
        bar.close()
        cache.flush()
    return done


def extract_manifest(
    manifest: Manifest,
    out_dir: str | Path,
    backbone_name: str = "mobilenet_v2",
    weights: str = "DEFAULT",
    splits: list[str] | None = None,
    image_size: int | None = None,
    views: list[str] | tuple[str, ...] = (),
    top_blocks: int = 0,
    **kw: Any,
) -> dict[str, ExtractReport]:
    """Extract every split (or ``splits``) of a manifest into ``out_dir/<split>/``;
    ``image_size`` resizes the input (default: the backbone's own size). ``top_blocks`` > 0
    caches the map before the backbone's last ``top_blocks`` blocks instead of its final grid:
    the input of ``train --fine-tune-blocks`` (vision/blocks.py). With ``views``
    (vision/views.py) the train split is extracted again under each view, into
    ``out_dir/train@<view>/`` (reports keyed the same way)."""
    names = manifest.split_names()
    unknown = [name for name in splits or [] if name not in names]
    if unknown:
        raise CaptionerError(f"unknown split(s) {unknown}; the manifest has {names}")
    backbone = load_backbone(backbone_name, weights, image_size)
    if top_blocks:
        backbone, _ = split_backbone(backbone, top_blocks)
    ctx, device = distributed.setup(torch.device(kw.get("device", "cpu")))
    kw["device"] = str(device)  # cuda:LOCAL_RANK under torchrun
    reports: dict[str, ExtractReport] = {}
    try:
        for name in splits or names:
            records = {r.file: manifest.path_of(r) for r in manifest.split(name)}
            reports[name] = extract_split(
                list(records.items()), Path(out_dir) / name, backbone, **kw
            )
            if name != "train":
                continue
            for view in views:
                folder = view_folder(name, view)
                header = {**(kw.get("extra_header") or {}), "view": view}
                reports[folder] = extract_split(
                    list(records.items()),
                    Path(out_dir) / folder,
                    backbone,
                    **{
                        **kw,
                        "image_transform": ViewTransform(view, kw.get("image_transform")),
                        "extra_header": header,
                    },
                )
    finally:
        distributed.teardown(ctx)
    return reports
