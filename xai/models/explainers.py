"""VIBI explainers: an image in, one logit per chunk out.

`ResNet_Nx` is a residual conv net that down-samples by N with log2(N) stride-2 stages, so each
output cell is the logit of one N x N chunk of pixels (28 x 28 with 4x: a 7 x 7 grid); input sizes
that N does not divide get a last, partial chunk (28 with 8x: 4 x 4 chunks, the last ones 4 px
wide). `Unet` keeps the input resolution: one logit per pixel. `xpl_channels` is 1 (a chunk covers
every colour channel) or the number of input channels (each channel has its own chunks). `width_multiplier`
multiplies every layer's channel count, so the same shape is small on a CPU and large on a GPU.

The head is a plain 1 x 1 convolution: logits are unbounded. An output ReLU (as in the public
code) lets the explainer die into all-zero logits, a uniform distribution and input-independent
chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from xai.chunks import chunk_grid
from xai.errors import ConfigError

ExplainerType = Literal["Unet", "ResNet_2x", "ResNet_4x", "ResNet_8x"]
CHUNK_SIZE: dict[str, int] = {"Unet": 1, "ResNet_2x": 2, "ResNet_4x": 4, "ResNet_8x": 8}


def scaled_channels(base: int, width_multiplier: float) -> int:
    """A layer's channel count: `base` scaled by the width multiplier, at least 4."""
    return max(4, round(base * width_multiplier))


def check_fits(explainer_type: str, xpl_channels: int, k: int, shape: tuple[int, ...],
               name: str, owner: type | None = None) -> int:
    """The number of chunks of `shape` (C x H x W) images; `ConfigError` naming the setting when
    `xpl_channels` or `k` (fields of the settings class `owner`) do not fit them."""
    c, h, w = shape
    if xpl_channels not in (1, c):
        raise ConfigError(f"`xpl_channels` = {xpl_channels} does not fit {name}'s {c}-channel "
                          f"images; allowed: 1" + (f" or {c}" if c > 1 else ""),
                          owner=owner, fields=("xpl_channels",))
    _, rows, cols = chunk_grid(shape, CHUNK_SIZE[explainer_type])
    chunks = xpl_channels * rows * cols
    if k >= chunks:
        raise ConfigError(f"`k` = {k} is out of range; allowed: below the {chunks} chunks of "
                          f"{explainer_type} on {name}'s {h} x {w} images", owner=owner,
                          fields=("k",))
    return chunks


def evaluation_budgets(budgets: Sequence[int], k: int, chunks: int) -> tuple[int, ...]:
    """The evaluation's budgets, `budgets` plus the explainer's `k`, sorted; `ConfigError` naming
    the setting when one exceeds the `chunks` it scores (chunks shared by the image's channels)."""
    if max(budgets) > chunks:
        raise ConfigError(f"`budgets` = {list(budgets)} is out of range; allowed: at most "
                          f"the explainer's {chunks} chunks", fields=("budgets",))
    if k > chunks:
        raise ConfigError(f"`k` = {k} is out of range for the evaluation, which keeps chunks shared "
                          f"by the channels; allowed: at most the explainer's {chunks} such chunks",
                          fields=("k",))
    return tuple(sorted(set(budgets) | {k}))


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out))


class StridedPointwise(nn.Conv2d):
    """A strided 1x1 convolution (no bias): the residual shortcut's. Over fewer than 8 input
    channels it is computed as a 1x1 convolution of the strided input, the same products: there
    oneDNN's backward pass of the strided form in channels-last corrupts the heap on CPUs without
    AVX-512 (torch 2.14.1), which only small explainers (width_multiplier < 0.5) reach."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels >= 8:
            return super().forward(x)
        rows, cols = self.stride
        return F.conv2d(x[:, :, ::rows, ::cols], self.weight)


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (a strided 1x1 conv when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(c_in, c_out, stride), nn.ReLU(inplace=True),
                                  conv_bn(c_out, c_out))
        self.shortcut = (nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            StridedPointwise(c_in, c_out, stride), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class ResNetExplainer(nn.Module):
    """Stem at full resolution, then one stride-2 residual block per halving, then the logit head.

    A 3x3 stride-2 convolution with padding 1 maps n pixels to ceil(n / 2), so after log2(N)
    stages an input of n pixels gives ceil(n / N) chunks of N pixels.
    """

    def __init__(self, in_channels: int, xpl_channels: int, downsample: int,
                 width_multiplier: float = 1.0) -> None:
        super().__init__()
        stages = int(math.log2(downsample))
        if 2 ** stages != downsample or stages < 1:
            raise ValueError(f"downsample must be a power of two >= 2, got {downsample}")
        c = scaled_channels(16, width_multiplier)
        layers: list[nn.Module] = [conv_bn(in_channels, c), nn.ReLU(inplace=True)]
        for i in range(stages):
            c_next = scaled_channels(16 * 2 ** min(i + 1, 2), width_multiplier)
            layers.append(ResidualBlock(c, c_next, stride=2))
            c = c_next
        layers.append(ResidualBlock(c, c))
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, xpl_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class UnetExplainer(nn.Module):
    """A two-level U-Net: one logit per pixel, with context from a 4x down-sampled bottleneck."""

    def __init__(self, in_channels: int, xpl_channels: int, width_multiplier: float = 1.0
                 ) -> None:
        super().__init__()
        c1, c2, c3 = (scaled_channels(16, width_multiplier), scaled_channels(32, width_multiplier),
                      scaled_channels(64, width_multiplier))
        self.enc1 = nn.Sequential(conv_bn(in_channels, c1), nn.ReLU(inplace=True),
                                  ResidualBlock(c1, c1))
        self.enc2 = ResidualBlock(c1, c2, stride=2)
        self.bottom = nn.Sequential(ResidualBlock(c2, c3, stride=2), ResidualBlock(c3, c3))
        self.dec2 = ResidualBlock(c3 + c2, c2)
        self.dec1 = ResidualBlock(c2 + c1, c1)
        self.head = nn.Conv2d(c1, xpl_channels, 1)

    @staticmethod
    def _up(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(self._up(self.bottom(e2), e2))
        return self.head(self.dec1(self._up(d2, e1)))


def build_explainer(explainer_type: str, in_channels: int, xpl_channels: int,
                    width_multiplier: float = 1.0) -> nn.Module:
    """The explainer named `explainer_type`: N x C x H x W -> N x xpl_channels x h x w logits."""
    if explainer_type == "Unet":
        return UnetExplainer(in_channels, xpl_channels, width_multiplier)
    if explainer_type in CHUNK_SIZE:
        return ResNetExplainer(in_channels, xpl_channels, CHUNK_SIZE[explainer_type], width_multiplier)
    raise ValueError(f"unknown explainer type {explainer_type!r}; choose one of "
                     + ", ".join(CHUNK_SIZE))
