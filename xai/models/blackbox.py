"""The black box: the classifier whose decisions the explainers explain.

Three architectures, picked by `blackbox.arch` (`auto`: by input size and channels):
- `small_cnn`, for 28 x 28 grey images: two 5x5 conv + max-pool layers and a two-layer head.
- `resnet`, for 32 x 32 colour images: a ResNet-9-style net (conv-BN-ReLU stages with residual
  blocks), `channels` channels in its first layer.
- `airbench`, for 32 x 32 colour images: Keller Jordan's airbench94 net (2024), a 2x2
  patch-whitening convolution and three conv-pool-BN-GELU groups of `channels`, 4 x `channels`
  and 4 x `channels`; 94 % on CIFAR-10 in about ten epochs with its recipe (`xai.train.blackbox`).
A saved model carries its rebuild config, so `load_blackbox` needs nothing else.

Or the user's own model (`blackbox.source`: a TorchScript `.pt` or a `torch.export` `.pt2` file):
the stage copies its bytes into the saved black box, which `load_blackbox` turns back into a
module, so every later stage explains it unchanged.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from xai.errors import CheckpointError, ConfigError
from xai.io import SavedFields, load_torch, save_torch
from xai.settings import bounded
from xai.tensors import state_dict_cpu, to_unit


@dataclass(frozen=True)
class BlackboxConfig:
    """The black-box classifier and how it is trained, or the user's model file (`source`)."""

    source: str = "train"
    arch: Literal["auto", "small_cnn", "resnet", "airbench"] = 'auto'
    channels: int = bounded(16, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = 'adam'
    lr: float = bounded(0.003, gt=0)
    weight_decay: float = bounded(0.0, ge=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    schedule: Literal["onecycle", "cosine", "constant", "triangle"] = 'onecycle'
    epochs: int = bounded(4, ge=1)
    batch_size: int = bounded(128, ge=1)
    augment: Literal["auto", "none", "crop", "crop_flip"] = 'auto'
    crop_padding: int = bounded(4, ge=0)
    crop_fill: Literal["zeros", "reflect"] = 'zeros'
    alternate_flips: bool = False  # each image mirrored in every other epoch, not at random
    label_smoothing: float = bounded(0.0, ge=0, lt=1)
    bias_lr_scale: float = bounded(1.0, gt=0)  # BatchNorm biases: lr x this, weight decay / this
    lookahead: bool = False  # every 5 steps, pull the weights to a slow average (airbench)
    whiten_bias_epochs: int = bounded(3, ge=0)  # airbench: epochs its whitening bias trains
    precision: Literal["auto", "fp32", "bf16"] = 'auto'
    eval_batch_size: int = bounded(2048, ge=1)

    def __post_init__(self) -> None:
        if self.source != "train" and Path(self.source).suffix not in (".pt", ".pt2"):
            raise ConfigError(f"`source` = {self.source!r} is not allowed; allowed: 'train', or "
                              "the path of a TorchScript .pt or torch.export .pt2 model file",
                              owner=BlackboxConfig, fields=("source",))

MODEL_KIND = "xai.blackbox"
PROBS_KIND = "xai.blackbox_probs"
TRAIN = "train"  # `blackbox.source` that trains the black box here
FORMATS = {".pt": "torchscript", ".pt2": "export"}  # the user's model file, by its suffix


# ----------------------------------------------------------------------------- architectures


class SmallCNN(nn.Module):
    """conv5-pool-conv5-pool-fc-fc: fast on a CPU and above 99 % on MNIST in a few epochs.

    Each max-pool comes before its ReLU: the same function and the same gradients, bit for bit
    (max and ReLU commute; a test checks both), with the ReLU and its backward on a quarter of
    the values.
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(channels, 2 * channels, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        )
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * channels * side * side, 8 * channels), nn.ReLU(inplace=True),
            nn.Linear(8 * channels, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _Conv(nn.Conv2d):
    """3x3 convolution, no bias, identity-initialised on its first `in_channels` filters (airbench:
    each layer starts close to passing its input through)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding=1, bias=False)
        with torch.no_grad():
            nn.init.dirac_(self.weight[:c_in])


class _Norm(nn.BatchNorm2d):
    """BatchNorm as airbench uses it: fast-moving statistics, a tiny eps, the scale fixed at 1 by
    its training recipe (the weight exists, so a judge built on this net can still learn it)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, momentum=0.4, eps=1e-12)


class _ConvGroup(nn.Module):
    """conv - max-pool - BN - GELU - conv - BN - GELU: one stage of airbench's net."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1, self.norm1 = _Conv(c_in, c_out), _Norm(c_out)
        self.conv2, self.norm2 = _Conv(c_out, c_out), _Norm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


class Airbench(nn.Module):
    """airbench94's net: a 2x2 patch-whitening convolution (`whiten`, set from the data by
    `init_whitening`), three conv groups, a global max-pool and a bias-free linear head whose
    logits are scaled by 1/9."""

    LOGIT_SCALE = 1 / 9

    def __init__(self, in_channels: int, num_classes: int, channels: int) -> None:
        super().__init__()
        widths = (channels, 4 * channels, 4 * channels)
        self.whiten = nn.Conv2d(in_channels, 2 * in_channels * 4, 2)
        self.groups = nn.Sequential(_ConvGroup(2 * in_channels * 4, widths[0]),
                                    _ConvGroup(widths[0], widths[1]),
                                    _ConvGroup(widths[1], widths[2]))
        self.head = nn.Linear(widths[2], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_max_pool2d(self.groups(F.gelu(self.whitened(x))), 1)
                         .flatten(1)) * self.LOGIT_SCALE

    def whitened(self, x: torch.Tensor) -> torch.Tensor:
        """`whiten`'s output, always in fp32: its filters are large (the inverse square roots of
        small eigenvalues, over the channels' spread) and its bias cancels most of their sum, so
        under bf16 autocast the rounding of inputs and weights alone moved two outputs by 0.23
        (rms) where their spread is 0.40 and 0.75 (CIFAR-10's JPEG copy), in training but not in
        an fp32 evaluation."""
        with torch.autocast(x.device.type, enabled=False):
            return self.whiten(x.float())

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set `whiten` from float [0, 1] images: each filter is an eigenvector of the 2x2 patch
        covariance of the channel-standardised images over the square root of its eigenvalue
        (plus `eps`), in both signs, so its outputs start decorrelated with unit variance;
        the bias centres them."""
        c, (kh, kw) = images.shape[1], self.whiten.kernel_size
        mean = images.mean((0, 2, 3))
        std = images.std((0, 2, 3))
        z = (images - mean[:, None, None]) / std[:, None, None]
        patches = z.unfold(2, kh, 1).unfold(3, kw, 1).permute(0, 2, 3, 1, 4, 5)
        patches = patches.reshape(-1, c * kh * kw).double()
        values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
        filters = (vectors.T / (values[:, None] + eps).sqrt()).flip(0).reshape(-1, c, kh, kw)
        filters = torch.cat([filters, -filters]).float() / std[None, :, None, None]
        self.whiten.weight.copy_(filters)
        self.whiten.bias.copy_(-(filters * mean[None, :, None, None]).sum((1, 2, 3)))


class ResNet9(nn.Module):
    """ResNet-9 (prep, three pooled stages, two residual blocks): 94 % CIFAR-10 class of net."""

    def __init__(self, in_channels: int, num_classes: int, channels: int) -> None:
        super().__init__()
        w = channels
        self.net = nn.Sequential(
            _conv_bn(in_channels, w),
            _conv_bn(w, 2 * w), nn.MaxPool2d(2), _Residual(2 * w),
            _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
            _conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8 * w, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class Architecture(SavedFields):
    """What it takes to rebuild a black box."""

    arch: str
    in_channels: int
    num_classes: int
    image_size: int
    channels: int  # of the first layer

    #: Field names as saved files spell them (older name, kept so saved models stay byte-identical).
    SAVED_NAMES: ClassVar[dict[str, str]] = {"channels": "width"}

    def build(self) -> nn.Module:
        if self.arch == "small_cnn":
            return SmallCNN(self.in_channels, self.num_classes, self.channels, self.image_size)
        if self.arch == "airbench":
            return Airbench(self.in_channels, self.num_classes, self.channels)
        return ResNet9(self.in_channels, self.num_classes, self.channels)


def architecture(cfg: BlackboxConfig, input_shape: tuple[int, ...], num_classes: int
                 ) -> Architecture:
    """Resolve `arch: auto` (small_cnn for grey images, resnet for colour) and check the shape."""
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ConfigError(f"the black box needs square C x H x W images, got {input_shape}")
    channels, size, _ = input_shape
    arch = cfg.arch if cfg.arch != "auto" else ("small_cnn" if channels == 1 else "resnet")
    if arch == "small_cnn" and size % 4:
        raise ConfigError(f"`arch` = small_cnn needs a side divisible by 4, got {size}",
                          owner=BlackboxConfig, fields=("arch",))
    smallest = {"resnet": 8, "airbench": 16}.get(arch, 0)  # three 2x pools (airbench: of side - 1)
    if size < smallest:
        raise ConfigError(f"`arch` = {arch} needs images of at least {smallest} x {smallest}, "
                          f"got {size}",
                          owner=BlackboxConfig, fields=("arch",))
    return Architecture(arch, channels, num_classes, size, cfg.channels)


# ----------------------------------------------------------------------------- the user's model


def _program(data: bytes, fmt: str) -> nn.Module:
    """The module in a TorchScript or torch.export archive (neither runs pickled Python)."""
    if fmt == "torchscript":
        return torch.jit.load(io.BytesIO(data), map_location="cpu")
    return torch.export.load(io.BytesIO(data)).module()


class UserModel(nn.Module):
    """The user's black box from its TorchScript or torch.export archive: float [0, 1]
    N x C x H x W in, logits out. It keeps the archive's bytes, which `save_blackbox` writes."""

    def __init__(self, data: bytes, fmt: str, source: str) -> None:
        super().__init__()
        self.data, self.format, self.source = data, fmt, source
        self.net = _program(data, fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> UserModel:
        """An exported graph is fixed in the mode it was exported in; TorchScript switches."""
        self.training = mode
        if self.format == "torchscript":
            self.net.train(mode)
        return self


def load_user_model(source: str | Path) -> UserModel:
    """The user's model file (`BlackboxConfig.source`); ConfigError naming the setting and the
    path when it is missing or not a TorchScript / torch.export model."""
    path = Path(source)
    fmt = FORMATS.get(path.suffix)
    what = {"torchscript": "a TorchScript model (torch.jit.save)",
            "export": "a torch.export program (torch.export.save)"}
    if fmt is None or not path.is_file():
        raise ConfigError(f"`source` = {str(source)!r}: no such file; allowed: 'train', or the "
                          "path of a TorchScript .pt or torch.export .pt2 model file",
                          owner=BlackboxConfig, fields=("source",))
    try:
        return UserModel(path.read_bytes(), fmt, str(source))
    except Exception as exc:  # noqa: BLE001 - the loaders raise many types for foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"`source` = {str(source)!r} is not {what[fmt]}: {first}",
                          owner=BlackboxConfig, fields=("source",)) from None


def check_outputs(model: nn.Module, x: torch.Tensor, num_classes: int, source: str) -> None:
    """The user's model must map batches of any size of these images to `num_classes` logits."""
    for n in (2, 3):  # two batch sizes: a program exported with a fixed batch fails here
        try:
            with torch.inference_mode():
                out = model(to_unit(x[:n]))
        except Exception as exc:  # noqa: BLE001 - whatever the user's program raises
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"`source` = {source!r} fails on a batch of {n} images of shape "
                              f"{tuple(x.shape[1:])} (float in [0, 1]; export with a dynamic "
                              f"batch dimension): {first}", owner=BlackboxConfig,
                              fields=("source",)) from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x[:n]), num_classes):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"`source` = {source!r} returns {shape} for {len(x[:n])} images; "
                              f"the data has {num_classes} classes, so it must return logits of "
                              f"shape ({len(x[:n])}, {num_classes})", owner=BlackboxConfig,
                              fields=("source",))


# ----------------------------------------------------------------------------- saving, loading


def save_blackbox(model: nn.Module, spec: Architecture, classes: tuple[str, ...],
                  path: str | Path) -> None:
    """Write the black box: its rebuild config and weights, or the user's archive. `spec` is the
    architecture (of the judge, for the user's model) that later stages build."""
    state = {"kind": MODEL_KIND, "architecture": spec.to_state(), "classes": list(classes)}
    if isinstance(model, UserModel):
        state |= {"source": model.source, "format": model.format, "program": model.data}
    else:
        state["state_dict"] = state_dict_cpu(model)
    save_torch(state, path)


def load_blackbox(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a saved black box (trained here or the user's) in eval mode; input float [0, 1]
    N x C x H x W, output logits. Its `Architecture` is the model's `architecture` attribute."""
    state = load_torch(path, kind=MODEL_KIND, required=["architecture"])
    try:
        spec = Architecture.from_state(state["architecture"])
        if "program" in state:
            model: nn.Module = UserModel(state["program"], state["format"], state["source"])
        else:
            model = spec.build()
            model.load_state_dict(state["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path} does not match a black-box architecture: "
                              f"{str(exc).splitlines()[0]}") from None
    model.architecture = spec
    return model.to(device).eval()


def save_probabilities(probs: dict[str, torch.Tensor], path: str | Path) -> None:
    save_torch({"kind": PROBS_KIND, **{k: v.float().cpu() for k, v in probs.items()}}, path)


def load_probabilities(path: str | Path, device: torch.device | str = "cpu"
                       ) -> dict[str, torch.Tensor]:
    """The black box's output probabilities on train / val / test, rows aligned with the data."""
    state = load_torch(path, kind=PROBS_KIND, required=["train", "val", "test"])
    return {k: state[k].to(device) for k in ("train", "val", "test")}


# ----------------------------------------------------------------------------- training


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(spec: Architecture) -> dict[str, Any]:
    """Architecture fields and parameter count, for logging."""
    return {**asdict(spec), "parameters": parameter_count(spec.build())}
