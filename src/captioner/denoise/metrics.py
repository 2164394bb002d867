"""PSNR and SSIM in torch, on batches ``[B, C, H, W]`` with values in ``[0, 1]``.

SSIM follows Wang et al. (2004) as ``skimage.metrics.structural_similarity`` computes it with
``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``: an 11x11 Gaussian window,
K1 = 0.01, K2 = 0.03, averaged over channels and over the valid (unpadded) positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(estimate: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB, one value per image of the batch."""
    mse = (estimate.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _window(size: int, sigma: float, channels: int, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(
    estimate: Tensor,
    target: Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
) -> Tensor:
    """Structural similarity, one value per image of the batch."""
    x, y = estimate.float(), target.float()
    channels = x.shape[1]
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"SSIM needs images of at least {window_size}x{window_size} pixels")
    w = _window(window_size, sigma, channels, x.device)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(dim=1)


@torch.inference_mode()
def score_denoiser(
    net: torch.nn.Module, val: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> dict[str, float]:
    """Mean PSNR/SSIM of the model on the fixed validation copies."""
    net.eval()
    scores: dict[str, float] = {}
    for name, prefix in (("mix", "val"), ("sigma25", "val_sigma25")):
        noisy, clean = val[name]
        p, s = [], []
        for start in range(0, len(noisy), 8):
            x = noisy[start : start + 8].to(device)
            y = clean[start : start + 8].to(device)
            estimate = net(x).clamp(0.0, 1.0)
            p.append(psnr(estimate, y))
            s.append(ssim(estimate, y))
        scores[f"{prefix}_psnr"] = round(float(torch.cat(p).mean()), 4)
        scores[f"{prefix}_ssim"] = round(float(torch.cat(s).mean()), 5)
    return scores
