"""``Denoiser``: a trained :class:`DenoiserNet` as a ``PIL.Image -> PIL.Image`` callable.

A denoiser folder holds ``model.safetensors`` and ``config.json`` (format marker, version,
architecture sizes, sha256 of the weights, training summary). The config is written last, so
a folder whose weights and config do not belong together is refused, and nothing is unpickled.
Large pictures are processed in overlapping tiles, so memory stays bounded. A geometric
self-ensemble (the mean over flipped and rotated copies, as in Lim et al. 2017, EDSR) trades
speed for PSNR at inference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from captioner.denoise.model import DenoiserConfig, DenoiserNet
from captioner.errors import CheckpointError
from captioner.fileio import (
    atomic_save_safetensors,
    atomic_write_json,
    load_state,
    read_json_document,
    verify_sha256,
)

FORMAT = "captioner-denoiser"
VERSION = 1
ARCHITECTURE = "unet-lite-residual"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SELF_ENSEMBLES = (1, 2, 8)
"""Copies averaged: 1 the picture alone, 2 with its mirror image, 8 every flip and rotation."""


class Denoiser:
    """Callable: RGB picture in, denoised RGB picture of the same size out.

    Other modes are converted to RGB first (grey replicated, alpha composited on white).
    ``tile`` bounds the size of one forward pass; tiles overlap by ``overlap`` pixels on each
    side and only their centres are kept, so tiling does not show. ``self_ensemble`` (one of
    :data:`SELF_ENSEMBLES`) averages the outputs of that many flipped/rotated copies, each
    mapped back: that many times the work. It runs :meth:`DenoiserNet.for_inference` of
    ``net`` (scales folded, channels-last), so ``self.net`` is not the module passed in.
    """

    def __init__(
        self,
        net: DenoiserNet,
        weights_id: str,
        info: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        tile: int = 512,
        overlap: int = 32,
        self_ensemble: int = 1,
    ) -> None:
        if tile <= 2 * overlap:
            raise ValueError(f"tile ({tile}) must be larger than twice the overlap ({overlap})")
        if self_ensemble not in SELF_ENSEMBLES:
            raise ValueError(f"self_ensemble must be one of {SELF_ENSEMBLES}, not {self_ensemble}")
        self.net = net.for_inference().to(device)
        self.weights_id = weights_id
        self.info = info or {}
        self.tile = tile
        self.overlap = overlap
        self.self_ensemble = self_ensemble

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def __call__(self, image: Image.Image) -> Image.Image:
        from captioner.vision.images import to_rgb

        rgb = image if image.mode == "RGB" else to_rgb(image)
        pixels = np.asarray(rgb, dtype=np.float32) / 255.0
        out = self.denoise_array(pixels)
        return Image.fromarray(np.rint(out * 255.0).astype(np.uint8), mode="RGB")

    @torch.inference_mode()
    def denoise_array(self, pixels: np.ndarray) -> np.ndarray:
        """Denoise a float ``[H, W, 3]`` array in [0, 1]; returns the same shape, clipped."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].to(self.device)
        return self.denoise_tensor(x)[0].permute(1, 2, 0).cpu().numpy()

    @torch.inference_mode()
    def denoise_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise a batch ``[B, 3, H, W]`` in [0, 1], tile by tile when it is large."""
        if self.self_ensemble == 1:
            return self._denoise_tiled(x)
        flips = (False, True)
        turns = range(4) if self.self_ensemble == 8 else range(1)
        total = torch.zeros_like(x)
        for flip in flips:
            for turn in turns:
                view = torch.rot90(x.flip(-1) if flip else x, turn, (-2, -1))
                out = torch.rot90(self._denoise_tiled(view), -turn, (-2, -1))
                total += out.flip(-1) if flip else out
        return total.div_(len(flips) * len(turns))

    def _denoise_tiled(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        x = x.contiguous(memory_format=torch.channels_last)
        if height <= self.tile and width <= self.tile:
            return self.net(x).clamp_(0.0, 1.0)
        out = torch.empty_like(x)
        step = self.tile - 2 * self.overlap
        for top in range(0, height, step):
            for left in range(0, width, step):
                t0, l0 = max(top - self.overlap, 0), max(left - self.overlap, 0)
                t1 = min(top + step + self.overlap, height)
                l1 = min(left + step + self.overlap, width)
                result = self.net(x[..., t0:t1, l0:l1])
                bottom, right = min(top + step, height), min(left + step, width)
                out[..., top:bottom, left:right] = result[
                    ..., top - t0 : bottom - t0, left - l0 : right - l0
                ]
        return out.clamp_(0.0, 1.0)


def save_denoiser(net: DenoiserNet, folder: str | Path, info: dict[str, Any] | None = None) -> str:
    """Write ``folder/model.safetensors`` then ``folder/config.json``; return the weights sha."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sha = atomic_save_safetensors(
        net.state_dict(), folder / WEIGHTS_FILE, metadata={"format": FORMAT}
    )
    atomic_write_json(
        folder / CONFIG_FILE,
        {
            "format": FORMAT,
            "version": VERSION,
            "architecture": ARCHITECTURE,
            "model": net.config.to_dict(),
            "weights_sha256": sha,
            "training": info or {},
        },
    )
    return sha


def resolve_denoiser_dir(path: str | Path) -> Path:
    """Accept the model folder itself or a training run folder that holds ``model/``."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file() and (path / "model" / CONFIG_FILE).is_file():
        return path / "model"
    return path


def load_denoiser(
    path: str | Path,
    device: str | torch.device = "cpu",
    tile: int = 512,
    overlap: int = 32,
    self_ensemble: int = 1,
) -> Denoiser:
    """Load a denoiser folder (or a ``denoise train`` run folder); refuse anything else."""
    folder = resolve_denoiser_dir(path)
    config = _read_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing denoiser weights")
    sha = verify_sha256(weights, config["weights_sha256"], folder / CONFIG_FILE)
    try:
        net = DenoiserNet(DenoiserConfig.from_dict(config["model"]))
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{folder / CONFIG_FILE}: bad architecture sizes ({exc})") from None
    load_state(net, weights)
    info = dict(config.get("training", {}))
    return Denoiser(net, sha, info, device, tile, overlap, self_ensemble)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a denoiser folder ({CONFIG_FILE} + {WEIGHTS_FILE})")
    config = read_json_document(
        path,
        FORMAT,
        VERSION,
        "captioner denoiser config",
        missing=f"missing; {folder} is not a denoiser",
    )
    if config.get("architecture") != ARCHITECTURE:
        raise CheckpointError(f"{path}: unknown architecture {config.get('architecture')!r}")
    for key in ("model", "weights_sha256"):
        if key not in config:
            raise CheckpointError(f"{path}: missing field {key!r}")
    return config
