"""The black box: the classifier whose decisions the explainers explain.

Two architectures, picked by `blackbox.arch` (`auto`: by input size and channels):
- `small_cnn`, for 28 x 28 grey images: two 5x5 conv + max-pool layers and a two-layer head.
- `resnet`, for 32 x 32 colour images: a ResNet-9-style net (conv-BN-ReLU stages with residual
  blocks), `width` channels in its first layer.
A saved model carries its rebuild config, so `load_blackbox` needs nothing else.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xai.data.augment import random_crop, random_flip
from xai.pipeline.config import BlackboxConfig
from xai.data.prepared import Dataset
from xai.devices import use_bf16
from xai.errors import CheckpointError, ConfigError
from xai.io import load_torch, save_torch
from xai.train.loop import (Distributed, History, Progress, autocast, check_finite, index_batches,
                          predict, state_dict_cpu, to_unit, unwrap)

MODEL_KIND = "xai.blackbox"
PROBS_KIND = "xai.blackbox_probs"


# ----------------------------------------------------------------------------- architectures


class SmallCNN(nn.Module):
    """conv5-pool-conv5-pool-fc-fc: fast on a CPU and above 99 % on MNIST in a few epochs."""

    def __init__(self, in_channels: int, num_classes: int, width: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * side * side, 8 * width), nn.ReLU(inplace=True),
            nn.Linear(8 * width, num_classes),
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


class ResNet9(nn.Module):
    """ResNet-9 (prep, three pooled stages, two residual blocks): 94 % CIFAR-10 class of net."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        w = width
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
class Architecture:
    """What it takes to rebuild a black box."""

    arch: str
    in_channels: int
    num_classes: int
    image_size: int
    width: int

    def build(self) -> nn.Module:
        if self.arch == "small_cnn":
            return SmallCNN(self.in_channels, self.num_classes, self.width, self.image_size)
        return ResNet9(self.in_channels, self.num_classes, self.width)


def architecture(cfg: BlackboxConfig, input_shape: tuple[int, ...], num_classes: int
                 ) -> Architecture:
    """Resolve `arch: auto` (small_cnn for grey images, resnet for colour) and check the shape."""
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ConfigError(f"the black box needs square C x H x W images, got {input_shape}")
    channels, size, _ = input_shape
    arch = cfg.arch if cfg.arch != "auto" else ("small_cnn" if channels == 1 else "resnet")
    if arch == "small_cnn" and size % 4:
        raise ConfigError(f"blackbox.arch = small_cnn needs a side divisible by 4, got {size}")
    if arch == "resnet" and size < 8:
        raise ConfigError(f"blackbox.arch = resnet needs images of at least 8 x 8, got {size}")
    return Architecture(arch, channels, num_classes, size, cfg.width)


def save_blackbox(model: nn.Module, spec: Architecture, classes: tuple[str, ...],
                  path: str | Path) -> None:
    save_torch({"kind": MODEL_KIND, "architecture": asdict(spec), "classes": list(classes),
                "state_dict": state_dict_cpu(model)}, path)


def load_blackbox(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a saved black box in eval mode; input float [0, 1] N x C x H x W, output logits.
    Its `Architecture` is the model's `architecture` attribute."""
    state = load_torch(path, kind=MODEL_KIND, required=["architecture", "state_dict"])
    try:
        spec = Architecture(**state["architecture"])
        model = spec.build()
        model.load_state_dict(state["state_dict"])
    except (TypeError, RuntimeError) as exc:
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


def make_optimizer(cfg: BlackboxConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _schedule(cfg: BlackboxConfig, opt: torch.optim.Optimizer, total_steps: int
              ) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                   pct_start=0.25)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def _augmenter(cfg: BlackboxConfig, channels: int, generator: torch.Generator):
    mode = cfg.augment if cfg.augment != "auto" else ("crop_flip" if channels == 3 else "none")

    def augment(x: torch.Tensor) -> torch.Tensor:
        if mode in ("crop", "crop_flip"):
            x = random_crop(x, cfg.crop_padding, generator)
        if mode == "crop_flip":
            x = random_flip(x, generator)
        return x

    return augment, mode


@dataclass
class TrainedBlackbox:
    model: nn.Module
    spec: Architecture
    history: History
    images_per_second: float
    augment: str


def train_blackbox(cfg: BlackboxConfig, data: Dataset, history: History, generator: torch.Generator,
                   dist: Distributed = Distributed(), stage: str = "train_blackbox"
                   ) -> TrainedBlackbox:
    """Train a black box on `data` (already on its device); per-epoch metrics go to `history`."""
    device = data.train.x.device
    spec = architecture(cfg, data.input_shape, data.num_classes)
    model = spec.build().to(device).to(memory_format=torch.channels_last)
    model = dist.wrap(model, device)
    opt = make_optimizer(cfg, model)
    steps = math.ceil(len(data.train) / cfg.batch_size)
    sched = _schedule(cfg, opt, steps * cfg.epochs)
    augment, mode = _augmenter(cfg, spec.in_channels, generator)
    amp = use_bf16(cfg.precision, device)
    rates = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        bar = Progress(steps, f"{stage} epoch {epoch}/{cfg.epochs}", enabled=dist.is_main)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for step, idx in enumerate(index_batches(len(data.train), cfg.batch_size, generator,
                                                 device)):
            idx = dist.shard(idx)
            x = augment(to_unit(data.train.x[idx])).contiguous(memory_format=torch.channels_last)
            y = data.train.y[idx]
            with autocast(device, amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            check_finite(loss, stage, epoch, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            bar.step(len(y) * dist.world_size, **({"loss": loss.item()} if step % 20 == 0 else {}))
        bar.close()
        rates.append(bar.items_per_second)
        seen = len(data.train) / dist.world_size
        val_loss, val_acc = evaluate(unwrap(model), data.val.x, data.val.y, cfg.eval_batch_size)
        history.log(epoch, {"train_loss": loss_sum.item() / seen,
                            "train_accuracy": correct.item() / seen,
                            "val_loss": val_loss, "val_accuracy": val_acc,
                            "lr": opt.param_groups[0]["lr"]})
    return TrainedBlackbox(unwrap(model).eval(), spec, history, sum(rates) / len(rates), mode)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
             ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on uint8 images `x` with labels `y`."""
    was_training = model.training
    model.eval()
    logits = predict(model, x, batch_size)
    model.train(was_training)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def probabilities(model: nn.Module, data: Dataset, batch_size: int) -> dict[str, torch.Tensor]:
    """Softmax outputs on every split (what VIBI trains against)."""
    return {s: predict(model, getattr(data, s).x, batch_size).softmax(1)
            for s in ("train", "val", "test")}


def describe(spec: Architecture) -> dict[str, Any]:
    """Architecture fields and parameter count, for logging."""
    return {**asdict(spec), "parameters": sum(p.numel() for p in spec.build().parameters())}
