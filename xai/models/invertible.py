"""Invertible classifier `f(x) = head(T(x))`: a bijection `T` followed by a linear head.

Every layer of `T` has an exact `inverse`, so `T.inverse` maps any feature tensor, e.g. a point
projected onto a decision boundary, back to input space in one batched call, and a `transform`
that also returns its log-determinant `log|det dy/dx|` per sample, so `T` is a normalising flow.

- The toy net (the reference's) is a stack of additive coupling blocks (NICE / memcnn style,
  log-det 0) with a plain linear head.
- The image net is a Glow-style flow: a logit transform of the pixels, then per stage a
  space-to-depth down-sampling ("psi" in i-RevNet) and steps of ActNorm, an invertible 1x1
  convolution and an affine coupling. Its head is a class-conditional Gaussian `N(mu_y, I)` on
  `z = T(x)`: the logits `mu_y·z - ||mu_y||^2 / 2` are linear in `z` (the softmax of Bayes' rule
  with equal priors), and `log p(x | y) = log N(T(x); mu_y, I) + log|det dT/dx|` is a density.

Both heads are affine, so every decision boundary is a hyperplane in feature space; `head.affine`
gives its weight over the whole feature tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xai.errors import CheckpointError
from xai.io import load_torch, save_torch
from xai.models.flow import (
    ActNorm,
    AffineCoupling,
    Bijection,
    Coupling,
    InvertibleConv1x1,
    InvertibleNet,
    Logit,
    Partial,
    Permutation,
    SpaceToDepth,
)
from xai.tensors import state_dict_cpu

TOY_KIND = "xai.invertible_toy"
IMAGE_KIND = "xai.invertible_image"


LOG_2PI = math.log(2 * math.pi)
#: Stages with more channels mix them with a fixed permutation instead of a learned 1x1
#: convolution: Adam moves every entry of a dense C x C factor by about lr per step, so its norm
#: moves by about C x lr, and with 784 channels (MNIST's last stage) training diverged at once.
MAX_CONV_CHANNELS = 64
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


class GaussianHead(nn.Module):
    """Class-conditional Gaussians `z | y ~ N(mu_y, I)` over the whole feature tensor, equal priors.

    The logits `mu_y·z - ||mu_y||^2 / 2` differ from `log N(z; mu_y, I)` by a term common to all
    classes, so their softmax is Bayes' posterior and they are affine in `z`: the boundary between
    two classes is the hyperplane halfway between their means, orthogonal to `mu_c - mu_k`.

    The means start `separation` apart in a random orthonormal frame of the first `active`
    channels (all by default). With `learned` they are parameters trained with the flow, so the
    boundary's normal `mu_c - mu_k` runs over the whole feature tensor. They are not where the data
    lie: a briefly trained flow separates its classes by stretching the features along `mu_c - mu_k`
    (on MNIST the training images' class centres end up several times further apart than the
    means), so counterfactuals move between those centres (`xai.explain.boundary.class_centres`).
    Fixed means had to be reached by the flow on the few coordinates that hold them: it learned to
    do that with small changes of the image, and moving a digit across a boundary changed it by
    noise (validity about 5 % at any margin).
    """

    def __init__(self, feature_shape: Sequence[int], classes: int, separation: float,
                 active: int | None = None, learned: bool = False) -> None:
        super().__init__()
        channels, *rest = feature_shape
        active = channels if active is None else active
        d = active * math.prod(rest)
        if classes > d:
            raise ValueError(f"{classes} classes need at least as many feature dimensions, not {d}")
        frame = torch.linalg.qr(torch.randn(d, classes, dtype=torch.float64))[0].T.float()
        means = torch.zeros(classes, *feature_shape)
        means[:, :active] = separation / math.sqrt(2) * frame.reshape(classes, active, *rest)
        if learned:
            self.means = nn.Parameter(means)
        else:
            self.register_buffer("means", means)

    def bias(self) -> torch.Tensor:
        return -0.5 * self.means.flatten(1).square().sum(dim=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1) @ self.means.flatten(1).T + self.bias()

    def affine(self, feature_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(weight, bias)` with `logits = (weight * z).sum over feature dims + bias`."""
        return self.means, self.bias()

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """`log N(z; mu_y, I) + log(1 / classes)` for every class, N x classes."""
        d = z[0].numel()
        constant = 0.5 * z.flatten(1).square().sum(dim=1) + 0.5 * d * LOG_2PI
        return self(z) - constant[:, None] - math.log(len(self.means))


class InvertibleClassifier(nn.Module):
    """`f(x) = head(T(x))`; `spec` holds what `build` needs to recreate the architecture.

    >>> import torch, xai
    >>> from xai.models.invertible import build, toy_classifier
    >>> _ = torch.manual_seed(0)
    >>> model = toy_classifier(4, 3, blocks=2, hidden=8).eval()
    >>> isinstance(model, xai.InvertibleClassifier), model.num_classes
    (True, 3)
    >>> x = torch.randn(5, 4)
    >>> with torch.no_grad():
    ...     model(x).shape, torch.allclose(model.inverse(model.features(x)), x, atol=1e-5)
    (torch.Size([5, 3]), True)
    >>> type(build(model.spec)).__name__  # the spec rebuilds the architecture
    'InvertibleClassifier'
    """

    def __init__(self, net: InvertibleNet, head: LinearHead | GaussianHead, spec: dict[str, Any]
                 ) -> None:
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

    def log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """`log p(x, y)` for every class `y` (N x classes) under the flow with a Gaussian head:
        `log N(T(x); mu_y, I) + log|det dT/dx| + log p(y)`. Its softmax over `y` is the model's
        posterior; its logsumexp is `log p(x)`."""
        if not isinstance(self.head, GaussianHead):
            raise TypeError("log_joint needs a classifier with a GaussianHead")
        z, logdet = self.net.transform(x)
        return self.head.log_joint(z) + logdet[:, None]


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
    small feature map does not reach GEMM speed. The last layer starts at zero.
    """

    def __init__(self, channels: int, hidden: int, out: int) -> None:
        super().__init__()
        self.inner = nn.Linear(channels, hidden)
        self.outer = nn.Linear(hidden, out)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.relu(self.inner(x.movedim(1, -1)))).movedim(-1, 1)


def _conv_subnet(channels: int, hidden: int, kernel: int, out: int) -> nn.Module:
    """Conv - ReLU - Conv keeping the map size; the last conv starts at zero (so every coupling
    starts as a fixed per-channel scale)."""
    if kernel == 1:
        return ChannelMLP(channels, hidden, out)
    last = nn.Conv2d(hidden, out, kernel, padding=kernel // 2)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(channels, hidden, kernel, padding=kernel // 2), nn.ReLU(), last)


def image_classifier(input_shape: Sequence[int], classes: int, downsample: Sequence[int],
                     blocks: Sequence[int], hidden: Sequence[int], kernel: Sequence[int],
                     separation: float = 10.0, split: Sequence[bool] | None = None,
                     means: str = "fixed") -> InvertibleClassifier:
    """A multi-scale Glow-style flow with a class-conditional Gaussian head.

    The logit transform first; stage `s` then starts with a `downsample[s]` space-to-depth
    (channels x f^2, sides / f) and has `blocks[s]` steps of ActNorm, invertible 1x1 convolution
    and affine coupling on its active channels, whose subnets have `hidden[s]` channels and
    `kernel[s]` x `kernel[s]` convolutions. Where `split[s]`, half of the active channels leave the
    flow after stage `s` (Glow's factor-out; `Partial`): they are modelled by the prior as they
    are, and the later stages work on the other half. `means` "learned": the class means start
    `separation` apart in a random frame of the whole feature tensor and are trained; "fixed":
    they stay `separation` apart on the channels active in the last stage. The sides must be
    divisible by the product of `downsample`.
    """
    channels, height, width = input_shape
    split = [False] * len(downsample) if split is None else list(split)
    if not (len(downsample) == len(blocks) == len(hidden) == len(kernel) == len(split)) \
            or not downsample:
        raise ValueError("downsample, blocks, hidden, kernel and split need one entry per stage")
    layers: list[Bijection] = [Logit()]
    active = channels
    for factor, n_blocks, n_hidden, size, halve in zip(downsample, blocks, hidden, kernel, split):
        if height % factor or width % factor:
            raise ValueError(f"{height}x{width} features cannot be down-sampled by {factor}")
        layers.append(SpaceToDepth(factor))
        channels, height, width = channels * factor**2, height // factor, width // factor
        active *= factor**2
        if (n_blocks or halve) and active % 2:
            raise ValueError(f"{active} channels cannot be split into halves")
        half = active // 2
        steps: list[Bijection] = []
        for _ in range(n_blocks):
            mix = InvertibleConv1x1 if active <= MAX_CONV_CHANNELS else Permutation
            steps += [ActNorm(active), mix(active),
                      AffineCoupling(_conv_subnet(half, n_hidden, size, 2 * (active - half)))]
        if steps:
            layers.append(Partial(active, steps))
        if halve:
            active = half
    spec = {"type": "image", "input_shape": list(input_shape), "classes": classes,
            "downsample": list(downsample), "blocks": list(blocks), "hidden": list(hidden),
            "kernel": list(kernel), "separation": separation, "split": split, "means": means}
    learned = means == "learned"
    head = GaussianHead((channels, height, width), classes, separation,
                        None if learned else active, learned)
    return InvertibleClassifier(InvertibleNet(layers), head, spec)


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
                                spec["blocks"], spec["hidden"], spec["kernel"], spec["separation"],
                                spec.get("split"), spec.get("means", "fixed"))
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
