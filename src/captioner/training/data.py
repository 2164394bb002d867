"""Batches of (cached feature grid, encoded caption) pairs for teacher forcing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from captioner.data.manifest import ImageRecord
from captioner.data.vocabulary import PAD_ID, Vocabulary
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureCache


@dataclass
class SplitData:
    """Captions of one split paired with the rows of its feature cache."""

    rows: list[int]  # cache row of each pair
    captions: list[list[int]]  # encoded caption of each pair
    images_without_features: list[str]


def pair_captions(
    cache: FeatureCache, records: list[ImageRecord], vocab: Vocabulary, max_words: int
) -> SplitData:
    """Encode every caption of every image whose features were extracted successfully."""
    valid = set(int(i) for i in cache.valid_indices())
    rows, captions, missing = [], [], []
    for record in records:
        try:
            row = cache.index_of(record.file)
        except CaptionerError:  # not in this cache: counted as missing, like a failed image
            row = -1
        if row not in valid:
            missing.append(record.file)
            continue
        for caption in record.captions:
            ids = vocab.encode(caption, max_length=max_words + 2)
            if len(ids) > 2:  # a caption with no word left after tokenisation is useless
                rows.append(row)
                captions.append(ids)
    if not rows:
        raise CaptionerError(
            f"no usable (image, caption) pairs: {len(missing)} of {len(records)} images have no "
            "extracted features; run `captioner extract` on this manifest first"
        )
    return SplitData(rows, captions, missing)


class CaptionFeatureDataset(Dataset):
    """Pairs of (feature grid, caption); with ``views`` (caches of the same images flipped or
    turned, same rows) an index ``(i, v)`` reads pair ``i`` from view ``v`` (0: the plain
    cache)."""

    def __init__(
        self, cache: FeatureCache, data: SplitData, views: Sequence[FeatureCache] = ()
    ) -> None:
        self.cache = cache
        self.caches = [cache, *views]
        self.data = data

    def __len__(self) -> int:
        return len(self.data.rows)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, view = index if isinstance(index, tuple) else (index, 0)
        row = self.data.rows[index]
        feats = np.asarray(self.caches[view].features(row), dtype=np.float32)
        return torch.from_numpy(feats), torch.tensor(self.data.captions[index], dtype=torch.long)


class ViewSampler(Sampler[tuple[int, int]]):
    """``base``'s indices, each with a view drawn uniformly from the plain features and
    ``views`` others; the draws depend on (seed, epoch) only, so a resumed run draws the
    same."""

    def __init__(self, base: Sampler[int], views: int, seed: int) -> None:
        self.base, self.views, self.seed, self.epoch = base, views, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        indices = list(self.base)
        drawn = rng.integers(0, self.views + 1, size=len(indices))
        return iter(zip(indices, (int(v) for v in drawn), strict=True))

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]


def collate_captions(
    batch: list[tuple[torch.Tensor, torch.Tensor]], pad_to_multiple: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack features and right-pad captions with <pad> to the longest in the batch.

    ``pad_to_multiple`` > 1 rounds the padded length up to a multiple of it (pads are ignored
    by the loss), so a compiled forward sees a few caption lengths instead of one per batch.
    """
    features = torch.stack([item[0] for item in batch])
    captions = torch.nn.utils.rnn.pad_sequence(
        [item[1] for item in batch], batch_first=True, padding_value=PAD_ID
    )
    extra = -captions.shape[1] % max(pad_to_multiple, 1)
    if extra:
        captions = torch.nn.functional.pad(captions, (0, extra), value=PAD_ID)
    return features, captions


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: disjoint shards covering the data exactly once.

    Unlike ``DistributedSampler`` it never repeats items to even out the shards, so sums over
    the shards (validation token losses) equal the single-process sums.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
