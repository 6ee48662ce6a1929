"""Invertible classifier `f(x) = head(T(x))`: a bijection `T` followed by a linear head.

`T` is a stack of additive coupling blocks (NICE / memcnn style) and, for images, invertible
space-to-depth down-sampling ("psi" in i-RevNet) between stages. Every layer has an exact
`inverse`, so `T.inverse` maps any feature tensor, e.g. a point projected onto a decision
boundary, back to input space in one batched call. The head is linear (optionally after global
average pooling, which is linear too), so every decision boundary is a hyperplane in feature space;
`LinearHead.affine` gives its weight over the whole feature tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xai.errors import CheckpointError
from xai.io import load_torch, save_torch
from xai.train.loop import state_dict_cpu

TOY_KIND = "xai.invertible_toy"
IMAGE_KIND = "xai.invertible_image"


class Coupling(nn.Module):
    """Additive coupling over the halves of dim 1: `y1 = x1 + F(x2)`, then `y2 = x2 + G(y1)`.

    `F` and `G` are arbitrary networks mapping a half to a half; the block is invertible whatever
    they are, and its inverse `x2 = y2 - G(y1)`, `x1 = y1 - F(x2)` is exact up to float rounding.
    """

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 + self.f(x2)
        return torch.cat([y1, x2 + self.g(y1)], dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y.chunk(2, dim=1)
        x2 = y2 - self.g(y1)
        return torch.cat([y1 - self.f(x2), x2], dim=1)


class SpaceToDepth(nn.Module):
    """Invertible down-sampling: each `b x b` pixel block becomes `b*b` channels (a permutation)."""

    def __init__(self, block: int = 2) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.block)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(y, self.block)


class InvertibleNet(nn.Module):
    """The bijection `T`: layers applied in order; `inverse` undoes them in reverse order."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z


class LinearHead(nn.Module):
    """Logits `W·h + b` of the features `h` (global-average-pooled first when `pool`)."""

    def __init__(self, features: int, classes: int, pool: bool) -> None:
        super().__init__()
        self.pool = pool
        self.linear = nn.Linear(features, classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z.mean(dim=(2, 3)) if self.pool else z)

    def affine(self, feature_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(weight, bias)` with `logits = (weight * z).sum over feature dims + bias` for one `z`.

        With pooling the weight of channel `c` is spread evenly over its `H x W` positions, so the
        boundary between two classes is a hyperplane over the whole `C x H x W` feature tensor.
        """
        weight = self.linear.weight
        if self.pool:
            channels, height, width = feature_shape
            weight = (weight / (height * width))[:, :, None, None]
            weight = weight.expand(-1, channels, height, width)
        return weight, self.linear.bias


class InvertibleClassifier(nn.Module):
    """`f(x) = head(T(x))`; `spec` holds what `build` needs to recreate the architecture."""

    def __init__(self, net: InvertibleNet, head: LinearHead, spec: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.head = head
        self.spec = dict(spec)

    @property
    def num_classes(self) -> int:
        return int(self.spec["classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """`z = T(x)`."""
        return self.net(x)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """`x = T^-1(z)` for a batch of feature tensors."""
        return self.net.inverse(z)


# ----------------------------------------------------------------------------- builders


def _mlp(width: int, hidden: int) -> nn.Sequential:
    """The reference toy subnet: Linear - ReLU - Linear - ReLU."""
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, width), nn.ReLU())


def toy_classifier(input_dim: int, classes: int, blocks: int, hidden: int
                   ) -> InvertibleClassifier:
    """The reference toy net: `blocks` couplings with MLP subnets, then `Linear(dim -> classes)`."""
    if input_dim % 2:
        raise ValueError(f"a coupling splits the input in halves; dimension {input_dim} is odd")
    half = input_dim // 2
    net = InvertibleNet([Coupling(_mlp(half, hidden), _mlp(half, hidden)) for _ in range(blocks)])
    spec = {"type": "toy", "input_shape": [input_dim], "classes": classes, "blocks": blocks,
            "hidden": hidden}
    return InvertibleClassifier(net, LinearHead(input_dim, classes, pool=False), spec)


class ChannelMLP(nn.Module):
    """A 1x1-conv subnet (Linear - ReLU - Linear over channels at every position), run as Linear.

    Same function as two 1x1 convolutions, but about 2-3x faster on CPUs, where a 1x1 conv over a
    small feature map does not reach GEMM speed. The last layer starts at zero (identity block).
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.inner = nn.Linear(channels, hidden)
        self.outer = nn.Linear(hidden, channels)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.relu(self.inner(x.movedim(1, -1)))).movedim(-1, 1)


def _conv_subnet(channels: int, hidden: int, kernel: int) -> nn.Module:
    """Conv - ReLU - Conv keeping the map size; the last conv starts at zero (identity block)."""
    if kernel == 1:
        return ChannelMLP(channels, hidden)
    last = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(channels, hidden, kernel, padding=kernel // 2), nn.ReLU(), last)


def image_classifier(input_shape: Sequence[int], classes: int, downsample: Sequence[int],
                     blocks: Sequence[int], hidden: Sequence[int], kernel: Sequence[int]
                     ) -> InvertibleClassifier:
    """Stages of couplings with conv subnets, each after a space-to-depth; then GAP + Linear.

    Stage `s` starts with a `downsample[s]` space-to-depth (channels x f^2, sides / f) and has
    `blocks[s]` couplings whose subnets have `hidden[s]` channels and `kernel[s]` x `kernel[s]`
    convolutions. The sides must be divisible by the product of `downsample`.
    """
    channels, height, width = input_shape
    if not (len(downsample) == len(blocks) == len(hidden) == len(kernel)) or not downsample:
        raise ValueError("downsample, blocks, hidden and kernel need one entry per stage")
    layers: list[nn.Module] = []
    for factor, n_blocks, n_hidden, size in zip(downsample, blocks, hidden, kernel):
        if height % factor or width % factor:
            raise ValueError(f"{height}x{width} features cannot be down-sampled by {factor}")
        layers.append(SpaceToDepth(factor))
        channels, height, width = channels * factor**2, height // factor, width // factor
        if n_blocks and channels % 2:
            raise ValueError(f"{channels} channels cannot be split into halves for a coupling")
        half = channels // 2
        layers += [Coupling(_conv_subnet(half, n_hidden, size), _conv_subnet(half, n_hidden, size))
                   for _ in range(n_blocks)]
    spec = {"type": "image", "input_shape": list(input_shape), "classes": classes,
            "downsample": list(downsample), "blocks": list(blocks), "hidden": list(hidden),
            "kernel": list(kernel)}
    return InvertibleClassifier(InvertibleNet(layers), LinearHead(channels, classes, pool=True),
                                spec)


@torch.inference_mode()
def reconstruction_error(model: InvertibleClassifier, x: torch.Tensor, batch_size: int = 1024
                         ) -> float:
    """`max |x - T^-1(T(x))|` over float inputs `x`, in batches."""
    worst = 0.0
    for i in range(0, len(x), batch_size):
        part = x[i:i + batch_size]
        worst = max(worst, float((model.inverse(model.features(part)) - part).abs().max()))
    return worst


def build(spec: dict[str, Any]) -> InvertibleClassifier:
    """Recreate an (untrained) classifier from its `spec`."""
    if spec.get("type") == "toy":
        return toy_classifier(spec["input_shape"][0], spec["classes"], spec["blocks"],
                              spec["hidden"])
    if spec.get("type") == "image":
        return image_classifier(spec["input_shape"], spec["classes"], spec["downsample"],
                                spec["blocks"], spec["hidden"], spec["kernel"])
    raise ValueError(f"unknown invertible classifier type {spec.get('type')!r}")


def save_classifier(model: InvertibleClassifier, path: str | Path, kind: str,
                    extra: dict[str, Any] | None = None) -> None:
    """Write `{"kind", "config", "state_dict", **extra}` atomically; loads with weights_only."""
    save_torch({"kind": kind, "config": model.spec, "state_dict": state_dict_cpu(model),
                **(extra or {})}, path)


def load_classifier(path: str | Path, kind: str, device: torch.device | str = "cpu"
                    ) -> InvertibleClassifier:
    """Rebuild a classifier saved by `save_classifier`, in eval mode on `device`."""
    obj = load_torch(path, kind=kind, required=["config", "state_dict"])
    try:
        model = build(obj["config"])
        model.load_state_dict(obj["state_dict"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match its architecture ({exc})") from None
    return model.to(device).eval()
