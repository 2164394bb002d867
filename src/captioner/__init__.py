"""captioner: Show, Attend and Tell image captioning in PyTorch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Captioner", "CaptionResult", "__version__"]

if TYPE_CHECKING:
    from captioner.caption.captioner import Captioner, CaptionResult


def __getattr__(name: str) -> Any:
    # Imported lazily so that `captioner --help` and the data tools do not load torch.
    if name in ("Captioner", "CaptionResult"):
        from captioner.caption import captioner as module

        return getattr(module, name)
    raise AttributeError(f"module 'captioner' has no attribute {name!r}")
