"""Fine-tuning the backbone's last blocks with the decoder, on cached prefix maps.

``captioner extract --top-blocks N`` caches, per image, the map before the backbone's last N
blocks; ``train --fine-tune-blocks N`` trains those blocks (their own, smaller learning rate;
batch-norm statistics frozen) together with the decoder. Batches are of captions drawn alone
(the default: the blocks run for each caption's image, a batch's few repeats once) or of whole
images (``fine_tune_batches="images"``: the blocks run once per image for all its captions;
cheaper, but on UCM the less varied batches trained worse). The saved model folder carries the
whole fine-tuned trunk (caption/captioner.py), so captioning images needs nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from captioner.caption.decoder import ShowAttendTell, TeacherForcingOutput
from captioner.data.vocabulary import PAD_ID
from captioner.errors import CaptionerError
from captioner.features.cache import FeatureCache
from captioner.training.data import SplitData
from captioner.vision.backbones import Backbone, load_backbone
from captioner.vision.blocks import grid_of_prefix, split_backbone

PairKey = tuple[int, int]  # (caption pair index, view: 0 the plain cache)


class TunedCaptionModel(nn.Module):
    """The backbone's top blocks and the decoder: cached prefix maps -> teacher forcing."""

    def __init__(self, top: nn.Sequential, decoder: ShowAttendTell, prefix_grid: tuple[int, int]):
        super().__init__()
        self.top = top
        self.decoder = decoder
        self.prefix_grid = prefix_grid

    def train(self, mode: bool = True) -> TunedCaptionModel:
        """The decoder trains; the top blocks stay in eval mode (frozen batch-norm statistics)."""
        super().train(mode)
        self.top.eval()
        return self

    def grids(self, prefix: torch.Tensor) -> torch.Tensor:
        """Prefix rows ``[U, h*w, C]`` -> the backbone's final grids ``[U, regions, channels]``."""
        return grid_of_prefix(self.top, prefix, self.prefix_grid)

    def forward(
        self,
        prefix: torch.Tensor,
        index: torch.Tensor,
        captions: torch.Tensor,
        skip_padding: bool = False,
    ) -> TeacherForcingOutput:
        """``prefix`` of the batch's distinct images; caption ``i`` is of image ``index[i]``."""
        return self.decoder(self.grids(prefix)[index], captions, skip_padding=skip_padding)


def tuned_backbone(
    cache_header: dict[str, Any], top_blocks: int, weights: str, folder: str
) -> tuple[Backbone, Backbone, nn.Sequential]:
    """(the whole stock backbone, its prefix, its last ``top_blocks`` blocks, trainable) for
    a cache of prefix maps, refusing a cache cut elsewhere or made from other weights."""
    cut_at = cache_header.get("top_blocks")
    if cut_at != top_blocks:
        made = f"the maps before the last {cut_at} blocks" if cut_at else "final grids"
        raise CaptionerError(
            f"{folder}: fine_tune_blocks={top_blocks} needs the maps before the backbone's last "
            f"{top_blocks} blocks (`captioner extract --top-blocks {top_blocks}`); this cache "
            f"holds {made}"
        )
    size = cache_header.get("preprocessing", {}).get("image_size")
    backbone = load_backbone(str(cache_header["backbone"]), weights, size)
    made_with = str(cache_header.get("weights_id"))
    if backbone.weights_id != made_with:
        raise CaptionerError(
            f"{folder}: these maps were made with weights {made_with[:12]}, the backbone "
            f"weights given ({weights}) are {backbone.weights_id[:12]}"
        )
    prefix, top = split_backbone(backbone, top_blocks)
    top.requires_grad_(True)
    return backbone, prefix, top


class PrefixPairs(Dataset):
    """(pair key, prefix map of its image, encoded caption) for keys ``(i, view)``."""

    def __init__(self, caches: Sequence[FeatureCache], data: SplitData) -> None:
        self.caches = list(caches)
        self.data = data

    def __len__(self) -> int:
        return len(self.data.rows)

    def __getitem__(self, key: PairKey) -> tuple[tuple[int, int], torch.Tensor, torch.Tensor]:
        index, view = key
        row = self.data.rows[index]
        prefix = np.asarray(self.caches[view].features(row), dtype=np.float32)
        caption = torch.tensor(self.data.captions[index], dtype=torch.long)
        return (row, view), torch.from_numpy(prefix), caption


class ImageBatches(Sampler[list[PairKey]]):
    """Batches of about ``batch_size`` captions: of whole images (``by_image``: all of an
    image's captions, one view per image and epoch, so the top blocks run once per image) or
    of captions drawn alone (as training on cached grids does; a view per caption). The order
    and views depend on (seed, epoch) only, so a resumed run draws the same."""

    def __init__(
        self,
        rows: Sequence[int],
        batch_size: int,
        views: int,
        seed: int,
        shuffle: bool,
        by_image: bool = True,
    ) -> None:
        groups: dict[int, list[int]] = {}
        for pair, row in enumerate(rows):
            groups.setdefault(row if by_image else pair, []).append(pair)
        self.groups = list(groups.values())
        self.batch_size, self.views, self.seed, self.shuffle = batch_size, views, seed, shuffle
        self.epoch = 0
        self._drawn: tuple[int, list[list[PairKey]]] | None = None  # (epoch, its batches)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[PairKey]]:
        """This epoch's batches, drawn once (``len()`` and iteration share them)."""
        if self._drawn is None or self._drawn[0] != self.epoch:
            self._drawn = (self.epoch, self._draw())
        return self._drawn[1]

    def _draw(self) -> list[list[PairKey]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.groups)) if self.shuffle else range(len(self.groups))
        drawn = rng.integers(0, self.views + 1, size=len(self.groups)) if self.views else None
        batches: list[list[PairKey]] = []
        batch: list[PairKey] = []
        for group in order:
            view = int(drawn[group]) if drawn is not None else 0
            batch.extend((pair, view) for pair in self.groups[group])
            if len(batch) >= self.batch_size:
                batches.append(batch)
                batch = []
        if batch:
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[PairKey]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


def collate_prefix_pairs(
    batch: list[tuple[tuple[int, int], torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prefix maps of the batch's distinct images, image index of each caption, captions
    right-padded with <pad>)."""
    slots: dict[tuple[int, int], int] = {}
    prefixes: list[torch.Tensor] = []
    index = []
    for key, prefix, _ in batch:
        if key not in slots:
            slots[key] = len(prefixes)
            prefixes.append(prefix)
        index.append(slots[key])
    captions = torch.nn.utils.rnn.pad_sequence(
        [caption for _, _, caption in batch], batch_first=True, padding_value=PAD_ID
    )
    return torch.stack(prefixes), torch.tensor(index, dtype=torch.long), captions


class GridsOf:
    """Cache rows -> the current top blocks' final grids (for decoding validation images)."""

    def __init__(self, model: TunedCaptionModel, cache: FeatureCache, device: torch.device):
        self.model, self.cache, self.device = model, cache, device

    @torch.inference_mode()
    def __call__(self, rows: Sequence[int]) -> torch.Tensor:
        prefix = np.stack([np.asarray(self.cache.features(r), dtype=np.float32) for r in rows])
        self.model.eval()
        return self.model.grids(torch.from_numpy(prefix).to(self.device))
