"""Where a model folder keeps its own fine-tuned backbone trunk, and how "DEFAULT" finds it.

Path logic only (no torch, no torchvision), so the captioner's folder code can use it without
loading the vision stack; ``vision/blocks.py`` writes the file.
"""

from __future__ import annotations

from pathlib import Path

TRUNK_FILE = "backbone.safetensors"  # a model folder's own fine-tuned trunk


def folder_trunk_weights(folder: Path, weights: str) -> str:
    """``weights``, except that "DEFAULT" means ``folder``'s own fine-tuned trunk if it has
    one."""
    own = folder / TRUNK_FILE
    return str(own) if weights.upper() == "DEFAULT" and own.is_file() else weights
