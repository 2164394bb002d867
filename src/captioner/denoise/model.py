"""A small fully convolutional residual denoiser (U-Net-lite), fast enough for a CPU.

The picture is folded into a half-resolution grid (pixel unshuffle, 3 -> 12 channels) and read
by a U-Net of plain 3x3 convolutions: each level halves the resolution and doubles the
channels, and the decoder adds the encoder's features back (skip connections). There is no
normalisation over space (at most a layer norm over each pixel's channels, ``norm="layer"``),
so a tile gives the same result as the whole image. The network predicts
the noise, plus a linear 3x3 filter of the input (a learned high-pass that trains in a few
steps); the clean estimate is ``noisy - noise`` (residual learning, as in DnCNN). Any height and
width work: the input is reflect-padded to a multiple of :attr:`DenoiserNet.multiple` and
cropped back.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture sizes (saved in the checkpoint's config.json)."""

    widths: tuple[int, ...] = (24, 48, 96, 192)  # channels per level, from half resolution down
    depths: tuple[int, ...] = (2, 2, 3, 4)  # 3x3 conv layers per level (each side of the U)
    in_channels: int = 3
    # "leaky_relu" (slope 0.1) or "relu". Plain ReLUs die at the learning rate that trains this
    # net in minutes: 40-98 % of a level's channels never fired after 4 epochs, and how many
    # died depended on rounding (1 or 2 threads), so the same run ended 1.4 dB apart.
    # Models saved without this key are ReLU models.
    activation: str = "leaky_relu"
    # Each conv of a level as a residual branch ``x + a * conv(act(x))`` with ``a`` learned
    # from 0 (SkipInit): the deepest path of the plain U (about 25 convs, no normalisation)
    # blows up under Adam. Models saved without this key are plain.
    residual: bool = True
    # The value each residual gain ``a`` starts from (training only: a saved model's gains are
    # its weights). 0.1 trains along the same curve as 0 (docs/RESULTS.md, the plateau probes).
    residual_gain: float = 0.0
    # "layer": each residual branch starts with a layer norm over the channels of each pixel
    # (NAFNet-style; per pixel, so a tile still gives the same result as the whole image).
    # "none": the branches are ``conv(act(x))``. Models saved without this key have none.
    norm: str = "none"

    def __post_init__(self) -> None:
        if not self.widths or len(self.widths) != len(self.depths):
            raise ValueError(f"widths and depths need one entry per level: {self}")
        if min(*self.widths, *self.depths, self.in_channels) < 1:
            raise ValueError(f"denoiser sizes must be positive: {self}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; known: {', '.join(ACTIVATIONS)}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; known: {', '.join(NORMS)}")
        if self.norm != "none" and not self.residual:
            raise ValueError("norm needs residual branches (residual=True)")

    def to_dict(self) -> dict[str, object]:
        return {
            "widths": list(self.widths),
            "depths": list(self.depths),
            "in_channels": self.in_channels,
            "activation": self.activation,
            "residual": self.residual,
            "residual_gain": self.residual_gain,
            "norm": self.norm,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DenoiserConfig:
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown denoiser settings {unknown}")
        return cls(
            widths=tuple(int(w) for w in data.get("widths", cls.widths)),  # type: ignore[attr-defined]
            depths=tuple(int(d) for d in data.get("depths", cls.depths)),  # type: ignore[attr-defined]
            in_channels=int(data.get("in_channels", 3)),  # type: ignore[call-overload]
            activation=str(data.get("activation", "relu")),
            residual=bool(data.get("residual", False)),
            residual_gain=float(data.get("residual_gain", 0.0)),  # type: ignore[arg-type]
            norm=str(data.get("norm", "none")),
        )


LEAKY_SLOPE = 0.1
ACTIVATIONS = ("leaky_relu", "relu")
NORMS = ("none", "layer")


def _activation(name: str, inplace: bool = True) -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE, inplace) if name == "leaky_relu" else nn.ReLU(inplace)


class PixelLayerNorm(nn.Module):
    """Layer norm over the channels of each pixel of a [B, C, H, W] map (with a learned
    per-channel scale and shift)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        moved = x.permute(0, 2, 3, 1)  # channels last: a view when x is channels-last
        normed = F.layer_norm(moved, moved.shape[-1:], self.weight, self.bias, self.eps)
        return normed.permute(0, 3, 1, 2)


class _ResidualConv(nn.Module):
    """``x + a * conv(act(norm(x)))``; ``a`` starts at ``gain`` (0: the block starts as the
    identity); ``norm`` is a :class:`PixelLayerNorm` or nothing."""

    scale: nn.Parameter | None

    def __init__(
        self, channels: int, activation: str, gain: float = 0.0, norm: str = "none"
    ) -> None:
        super().__init__()
        self.norm: nn.Module = PixelLayerNorm(channels) if norm == "layer" else nn.Identity()
        self.act = _activation(activation, inplace=False)  # x is needed for the sum
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.scale = nn.Parameter(torch.full((), float(gain)))

    def forward(self, x: Tensor) -> Tensor:
        branch = self.conv(self.act(self.norm(x)))
        if self.scale is None:  # folded into the conv (inference copies)
            return x + branch
        return x + self.scale * branch

    @torch.no_grad()
    def fold_scale(self) -> None:
        """Multiply ``a`` into the conv's weights and bias: one pass over the maps less."""
        if self.scale is not None:
            self.conv.weight.mul_(self.scale)
            self.conv.bias.mul_(self.scale)
            self.scale = None


def residual_gains_of(module: nn.Module) -> list[nn.Parameter]:
    """The gains of the residual convs inside ``module`` (a network or one of its blocks)."""
    return [
        m.scale for m in module.modules() if isinstance(m, _ResidualConv) and m.scale is not None
    ]


def _convs(channels: int, count: int, config: DenoiserConfig) -> nn.Sequential:
    activation = config.activation
    layers: list[nn.Module] = []
    for _ in range(count):
        if config.residual:
            layers.append(_ResidualConv(channels, activation, config.residual_gain, config.norm))
        else:
            layers += [nn.Conv2d(channels, channels, 3, padding=1), _activation(activation)]
    return nn.Sequential(*layers)


class DenoiserNet(nn.Module):
    """Maps a noisy batch [B, C, H, W] in [0, 1] to its denoised estimate (same shape)."""

    def __init__(self, config: DenoiserConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DenoiserConfig()
        c, widths, depths = config.in_channels, config.widths, config.depths
        act = config.activation
        self.multiple = 2 ** len(widths)  # pixel unshuffle, then one halving per extra level
        self.head = nn.Sequential(nn.Conv2d(4 * c, widths[0], 3, padding=1), _activation(act))
        self.encoders = nn.ModuleList(
            _convs(w, d, config) for w, d in zip(widths[:-1], depths[:-1], strict=True)
        )
        self.downs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), _activation(act))
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.bottom = _convs(widths[-1], depths[-1], config)
        self.ups = nn.ModuleList(
            nn.Sequential(nn.Conv2d(b, 4 * a, 1), nn.PixelShuffle(2))
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.decoders = nn.ModuleList(
            _convs(w, d, config) for w, d in zip(widths[:-1], depths[:-1], strict=True)
        )
        self.tail = nn.Conv2d(widths[0], 4 * c, 3, padding=1)
        # A linear path from the input to the noise estimate: a learned high-pass filter.
        self.linear = nn.Conv2d(4 * c, 4 * c, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He init keeps the signal alive through ReLUs
                nn.init.kaiming_normal_(
                    module.weight, a=LEAKY_SLOPE if act == "leaky_relu" else 0.0,
                    nonlinearity=act,
                )  # fmt: skip
                nn.init.zeros_(module.bias)
        for module in (self.tail, self.linear):  # starts close to the identity (no noise)
            nn.init.normal_(module.weight, std=1e-3)

    def forward(self, noisy: Tensor) -> Tensor:
        height, width = noisy.shape[-2:]
        pad_h, pad_w = (-height) % self.multiple, (-width) % self.multiple
        x = noisy
        if pad_h or pad_w:
            mode = "reflect" if min(height, width) > max(pad_h, pad_w) else "replicate"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        estimate, _ = self._run(x)
        return estimate[..., :height, :width]

    def forward_levels(self, noisy: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The estimate and, from the second level down, each level's decoder output
        (the bottom's last): ``[B, widths[k], H / 2^(k+1), W / 2^(k+1)]`` for level k. For
        training with auxiliary losses; height and width must be multiples of
        :attr:`multiple` (training crops are)."""
        height, width = noisy.shape[-2:]
        if height % self.multiple or width % self.multiple:
            raise ValueError(f"forward_levels needs sizes that are multiples of {self.multiple}")
        return self._run(noisy)

    def _run(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        folded = F.pixel_unshuffle(x, 2)
        h = self.head(folded)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            h = encoder(h)
            skips.append(h)
            h = down(h)
        h = self.bottom(h)
        levels = [h]
        for i in reversed(range(len(self.ups))):
            h = self.decoders[i](self.ups[i](h) + skips[i])
            if i:
                levels.insert(0, h)
        noise = F.pixel_shuffle(self.tail(h) + self.linear(folded), 2)
        return x - noise, levels

    def for_inference(self) -> DenoiserNet:
        """A copy in eval mode with every residual scale folded into its conv and the weights
        channels-last (the fast layout for CPU convolutions); the same function up to float
        rounding. Not for training or saving: the folded copy has no scales to learn."""
        net = copy.deepcopy(self).eval()
        for module in net.modules():
            if isinstance(module, _ResidualConv):
                module.fold_scale()
        return net.to(memory_format=torch.channels_last)

    def residual_gains(self) -> list[nn.Parameter]:
        """The learned scalar gain of every residual conv, in parameter order (none when the
        network is plain or folded)."""
        return residual_gains_of(self)

    @torch.no_grad()
    def inactive_channels(self, noisy: Tensor, batch: int = 8) -> dict[str, float]:
        """Per activation layer, the share of its channels that are never positive on
        ``noisy``: dead units for ReLUs (no gradient ever reaches them again), units stuck on
        the small negative slope for leaky ReLUs. A healthy run keeps these low."""
        fired: dict[str, Tensor] = {}

        def hook(name: str) -> Any:
            def record(_module: nn.Module, _inputs: object, output: Tensor) -> None:
                seen = (output > 0).flatten(2).any(dim=2).any(dim=0)
                fired[name] = fired[name] | seen if name in fired else seen

            return record

        layers = [(n, m) for n, m in self.named_modules() if isinstance(m, nn.ReLU | nn.LeakyReLU)]
        hooks = [module.register_forward_hook(hook(name)) for name, module in layers]
        was_training = self.training
        self.eval()
        try:
            for start in range(0, len(noisy), batch):
                self(noisy[start : start + batch])
        finally:
            for handle in hooks:
                handle.remove()
            self.train(was_training)
        return {name: round(1.0 - float(f.float().mean()), 4) for name, f in fired.items()}
