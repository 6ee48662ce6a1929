"""The measurement models that judge counterfactuals, independent of every explained model.

As Van Looveren and Klaise (2021) and Hvilshoj, Iosifidis and Assent (2021) measure image
counterfactuals: one small convolutional autoencoder per class, one autoencoder of all classes
(IM1 and IM2), and an oracle classifier of another architecture than the explained models (its
answer is the oracle validity, its penultimate features the space the FID is measured in).

- Class autoencoders: Van Looveren and Klaise's MNIST class-specific architecture, conv3x3(16) -
  ReLU - pool - conv3x3(8) - ReLU - pool - conv3x3(8) (a 8 x H/4 x W/4 code), decoded by
  conv3x3(8) - ReLU - up - conv3x3(16) - ReLU - up - conv3x3(C), linear output. All `classes` of
  them run as one network of grouped convolutions (group `j` is class `j`'s autoencoder; the
  groups share nothing), so one call reconstructs an image under every class's autoencoder.
- All-class autoencoder: their architecture for all data, conv3x3(16) - ReLU - conv3x3(16) -
  ReLU - pool - conv3x3(1) (a 1 x H/2 x W/2 code), decoded by conv3x3(16) - ReLU - up -
  conv3x3(16) - ReLU - conv3x3(C).
- Oracle: a multilayer perceptron (flattened pixels, `hidden` ReLU layers, a linear head): no
  convolution, no pooling and no invertible layer, unlike the black box (a CNN) and the
  invertible classifier (a flow); `features` is its last hidden layer.

Every model takes images scaled to [-0.5, 0.5] (`scale`), the published measures' input scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from xai.errors import CheckpointError
from xai.io import SavedFields, load_torch, save_torch
from xai.tensors import state_dict_cpu, to_unit

KIND = "xai.measurement_models"


def scale(x: torch.Tensor) -> torch.Tensor:
    """Images (uint8, or floats in [0, 1]) -> floats in [-0.5, 0.5], the measurement models' input."""
    return to_unit(x) - 0.5


def _conv(c_in: int, c_out: int, groups: int) -> nn.Conv2d:
    return nn.Conv2d(c_in * groups, c_out * groups, 3, padding=1, groups=groups)


class ClassAutoencoders(nn.Module):
    """`classes` autoencoders of C-channel images as one grouped network.

    `forward(x)` takes N x C x H x W and returns N x classes x C x H x W: every image through
    every class's autoencoder. `forward_stacked(xs)` takes N x (classes * C) x H x W, slice `j`
    an image of class `j`, and returns the same shape (what training uses: one image of each
    class per row)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.channels, self.classes = channels, classes
        g = classes
        self.net = nn.Sequential(
            _conv(channels, 16, g), nn.ReLU(), nn.MaxPool2d(2),
            _conv(16, 8, g), nn.ReLU(), nn.MaxPool2d(2),
            _conv(8, 8, g),
            _conv(8, 8, g), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(8, 16, g), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
            _conv(16, channels, g),
        )

    def forward_stacked(self, xs: torch.Tensor) -> torch.Tensor:
        return self.net(xs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        out = self.net(x.repeat(1, self.classes, 1, 1))
        return out.view(n, self.classes, c, h, w)

    def one(self, j: int, x: torch.Tensor) -> torch.Tensor:
        """`x` (N x C x H x W) through class `j`'s autoencoder alone (its slice of every grouped
        convolution), a tenth of `forward`'s work with ten classes."""
        h = x
        for layer in self.net:
            if isinstance(layer, nn.Conv2d):
                out = layer.out_channels // self.classes
                bias = layer.bias[j * out:(j + 1) * out] if layer.bias is not None else None
                h = nn.functional.conv2d(h, layer.weight[j * out:(j + 1) * out], bias,
                                         padding=layer.padding)
            else:
                h = layer(h)
        return h

    def reconstruct(self, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Each image of `x` (N x C x H x W) through the autoencoder of its class in `classes`
        (N), in one pass per class present."""
        out = torch.empty_like(x)
        for j in classes.unique().tolist():
            chosen = classes == j
            out[chosen] = self.one(int(j), x[chosen]).to(out.dtype)
        return out


class Autoencoder(nn.Module):
    """The all-class autoencoder: N x C x H x W in and out."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 1, 3, padding=1),
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Oracle(nn.Module):
    """A multilayer perceptron classifier; `features(x)` is its last hidden layer."""

    def __init__(self, inputs: int, hidden: tuple[int, ...], classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class MeasurementSpec(SavedFields):
    """What it takes to rebuild the measurement models."""

    input_shape: tuple[int, ...]
    classes: int
    oracle_hidden: tuple[int, ...]

    SAVED_NAMES: ClassVar[dict[str, str]] = {}


@dataclass
class MeasurementModels:
    """The class autoencoders, the all-class autoencoder and the oracle, in eval mode; each takes
    images scaled by `scale`."""

    spec: MeasurementSpec
    class_aes: ClassAutoencoders
    all_ae: Autoencoder
    oracle: Oracle

    def to(self, device: torch.device | str) -> MeasurementModels:
        return MeasurementModels(self.spec, self.class_aes.to(device), self.all_ae.to(device),
                                 self.oracle.to(device))

    def eval(self) -> MeasurementModels:
        for m in (self.class_aes, self.all_ae, self.oracle):
            m.eval()
        return self


def build(spec: MeasurementSpec) -> MeasurementModels:
    """Fresh (untrained) measurement models for images of `spec.input_shape`."""
    c, h, w = spec.input_shape
    if h % 4 or w % 4:
        raise ValueError(f"the class autoencoders need sides divisible by 4, got {h} x {w}")
    return MeasurementModels(spec, ClassAutoencoders(c, spec.classes), Autoencoder(c),
                             Oracle(c * h * w, tuple(spec.oracle_hidden), spec.classes))


def save_measurement_models(models: MeasurementModels, path: str | Path,
                            extra: dict[str, Any] | None = None) -> None:
    """Write the models and their spec atomically; loads with weights_only."""
    spec = models.spec.to_state()
    spec = {**spec, "input_shape": list(spec["input_shape"]),
            "oracle_hidden": list(spec["oracle_hidden"])}
    save_torch({"kind": KIND, "spec": spec,
                "class_aes": state_dict_cpu(models.class_aes),
                "all_ae": state_dict_cpu(models.all_ae),
                "oracle": state_dict_cpu(models.oracle), **(extra or {})}, path)


def load_measurement_models(path: str | Path, device: torch.device | str = "cpu"
                            ) -> MeasurementModels:
    """Rebuild the models `save_measurement_models` wrote, in eval mode on `device`."""
    obj = load_torch(path, kind=KIND, required=["spec", "class_aes", "all_ae", "oracle"])
    try:
        state = dict(obj["spec"])
        spec = MeasurementSpec.from_state({**state, "input_shape": tuple(state["input_shape"]),
                                           "oracle_hidden": tuple(state["oracle_hidden"])})
        models = build(spec)
        models.class_aes.load_state_dict(obj["class_aes"])
        models.all_ae.load_state_dict(obj["all_ae"])
        models.oracle.load_state_dict(obj["oracle"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match the measurement models ({exc})") from None
    return models.to(device).eval()
