"""The denoising stage: a small residual U-Net run on photos before captioning.

```python
from captioner.denoise import load_denoiser

denoiser = load_denoiser("runs/denoiser/model")   # model.safetensors + config.json
clean = denoiser(noisy_pil_image)                   # RGB in, RGB of the same size out
denoiser.weights_id                                 # sha256 of model.safetensors
```

The names below are imported on first use, so that the CLI parser stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from captioner.denoise.apply import apply_denoiser
    from captioner.denoise.denoiser import Denoiser, load_denoiser, save_denoiser

__all__ = ["Denoiser", "apply_denoiser", "load_denoiser", "save_denoiser"]

_HOMES = {
    "Denoiser": "captioner.denoise.denoiser",
    "load_denoiser": "captioner.denoise.denoiser",
    "save_denoiser": "captioner.denoise.denoiser",
    "apply_denoiser": "captioner.denoise.apply",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'captioner.denoise' has no attribute {name!r}")
