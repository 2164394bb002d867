"""The optional denoiser: loaded from ``captioner.denoise`` when that module offers one.

The server needs only a callable ``PIL.Image -> PIL.Image``; ``captioner.denoise.load_denoiser``
is looked up at run time so the service works (without the denoise option) where it is absent.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import io
from pathlib import Path

from PIL import Image

from captioner.errors import CaptionerError
from captioner.serve.worker import Denoiser

#: Pictures are shrunk to this side before denoising (bounds the time on a CPU).
DENOISE_MAX_SIDE = 768


def load_denoiser(path: str | Path, device: str = "cpu") -> Denoiser:
    """``captioner.denoise.load_denoiser(path)``, or a CaptionerError saying why not."""
    path = Path(path)
    try:
        module = importlib.import_module("captioner.denoise")
    except ImportError as exc:
        raise CaptionerError(f"--denoise: the denoiser module is not available ({exc})") from None
    loader = getattr(module, "load_denoiser", None)
    if not callable(loader):
        raise CaptionerError(
            "--denoise: this installation's captioner.denoise has no load_denoiser(); "
            "serve without --denoise"
        )
    if not path.exists():
        raise CaptionerError(f"--denoise: {path}: no such file or folder")
    takes_device = "device" in inspect.signature(loader).parameters
    denoiser = loader(path, device=device) if takes_device else loader(path)
    if not callable(denoiser):
        raise CaptionerError(f"--denoise: {path} did not give a callable denoiser")
    return bounded(denoiser)


def bounded(denoiser: Denoiser, max_side: int = DENOISE_MAX_SIDE) -> Denoiser:
    """Wrap ``denoiser`` so it never sees a picture larger than ``max_side``."""

    def run(image: Image.Image) -> Image.Image:
        if max(image.size) > max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return denoiser(image)

    return run


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
