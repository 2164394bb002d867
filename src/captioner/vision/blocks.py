"""A backbone cut in two for fine-tuning: a frozen prefix and its last N blocks.

Fine-tuning on a CPU is affordable when the frozen prefix runs once per image: ``captioner
extract --top-blocks N`` caches the prefix's activations (MobileNetV2 at 224 px, N=5: block
13's 14x14x96 map, smaller than the final 7x7x1280 grid), and training runs only the top
blocks on them. A fine-tuned trunk is saved whole as safetensors marked ``TRUNK_FORMAT``;
``load_backbone(name, that_file)`` builds the stock network and loads it strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from captioner.errors import CaptionerError
from captioner.fileio import atomic_save_safetensors
from captioner.vision.backbones import TRUNK_FORMAT, Backbone
from captioner.vision.efficientnet_lite import LiteTrunk
from captioner.vision.trunk_file import TRUNK_FILE


def trunk_blocks(trunk: nn.Module) -> list[nn.Module]:
    """The trunk's blocks in order: what ``top_blocks`` counts from the end."""
    if isinstance(trunk, LiteTrunk):
        return trunk.blocks()
    if isinstance(trunk, nn.Sequential):
        return list(trunk.children())
    raise CaptionerError(f"{type(trunk).__name__}: this trunk cannot be cut into blocks")


def split_backbone(backbone: Backbone, top_blocks: int) -> tuple[Backbone, nn.Sequential]:
    """(the frozen prefix as a ``Backbone`` whose grid is its output map, the last
    ``top_blocks`` blocks). The blocks are the backbone's own modules: training them trains
    ``backbone.trunk``."""
    if backbone.top_blocks:
        raise CaptionerError("this backbone is already a prefix; cut the whole backbone")
    blocks = trunk_blocks(backbone.trunk)
    if not 1 <= top_blocks < len(blocks):
        raise CaptionerError(
            f"{backbone.name} has {len(blocks)} blocks: --top-blocks must be between 1 and "
            f"{len(blocks) - 1}, not {top_blocks}"
        )
    prefix = nn.Sequential(*blocks[:-top_blocks])
    top = nn.Sequential(*blocks[-top_blocks:])
    size = backbone.preprocessing.image_size
    with torch.no_grad():
        channels, *grid = prefix.eval()(torch.zeros(1, 3, size, size)).shape[1:]
    cut = Backbone(
        backbone.name,
        prefix,
        int(channels),
        (int(grid[0]), int(grid[1])),
        backbone.preprocessing,
        backbone.weights_id,
        top_blocks=top_blocks,
    )
    return cut, top


def grid_of_prefix(top: nn.Module, prefix: Tensor, grid: tuple[int, int]) -> Tensor:
    """Cached prefix rows ``[B, h*w, C]`` -> the top blocks' grid ``[B, regions, channels]``."""
    batch, _, channels = prefix.shape
    maps = prefix.transpose(1, 2).reshape(batch, channels, *grid)
    return top(maps.contiguous(memory_format=torch.channels_last)).flatten(2).transpose(1, 2)


def save_trunk(backbone: Backbone, path: Path) -> str:
    """Write the whole trunk (fine-tuned blocks included) as safetensors; returns its SHA-256,
    which is what ``load_backbone`` then reports as the weights' id."""
    metadata = {"format": TRUNK_FORMAT, "backbone": backbone.name}
    return atomic_save_safetensors(backbone.trunk.state_dict(), path, metadata=metadata)


def write_folder_trunk(folder: Path, backbone: Backbone | None) -> str | None:
    """Save ``backbone``'s trunk as ``folder``'s own (returns its SHA-256), or with None
    remove a stale one so that loading the folder does not pick it up."""
    if backbone is not None:
        return save_trunk(backbone, folder / TRUNK_FILE)
    (folder / TRUNK_FILE).unlink(missing_ok=True)
    return None
