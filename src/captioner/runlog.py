"""What a long run (training, fine-tuning, denoiser training) writes while it goes: console
lines that do not break tqdm's bars, and TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm


def say(progress: bool, message: str) -> None:
    """Print a line above the progress bar when bars are shown, else a plain flushed line."""
    if progress:
        tqdm.write(message)
    else:
        print(message, flush=True)


def tensorboard_writer(folder: Path) -> Any | None:
    """A SummaryWriter for ``folder``; None where tensorboard is not importable (it is a
    dependency, but runs stay usable without it)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder))
