"""Training the measurement models (`xai.models.measurement`) on training images only.

Nothing here sees an explained model: the class autoencoders learn to reconstruct the training
images of their class, the all-class autoencoder all training images (mean squared error, Adam,
one-cycle schedule), and the oracle learns the labels (cross-entropy). The class autoencoders train
together, one image of every class per row of a batch (`ClassAutoencoders.forward_stacked`); an
epoch has as many rows as the largest class has images, smaller classes wrapping around their own
shuffled order. The autoencoders' convolutions run channels-last (`xai.devices.CONV_LAYOUT`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xai.data.prepared import Dataset, Split
from xai.devices import CONV_LAYOUT, use_bf16
from xai.errors import ConfigError
from xai.models.measurement import (
    ClassAutoencoders,
    MeasurementModels,
    MeasurementSpec,
    build,
    scale,
)
from xai.settings import bounded
from xai.tensors import autocast
from xai.train.loop import check_finite, index_batches


@dataclass(frozen=True)
class MeasurementConfig:
    """How the measurement models are trained: the class autoencoders start from one autoencoder
    of their architecture trained `pretrain_epochs` on all classes, then each trains
    `class_ae_epochs` on its own class (`class_batch_size` images of every class per step, at
    `class_ae_lr`); the all-class autoencoder (`all_ae_epochs`, `lr`) and the oracle
    (`oracle_epochs`, `oracle_lr`) train on all classes, `batch_size` images per step."""

    pretrain_epochs: int = bounded(1, ge=0)
    class_ae_epochs: int = bounded(2, ge=1)
    all_ae_epochs: int = bounded(1, ge=1)
    oracle_epochs: int = bounded(6, ge=1)
    oracle_hidden: tuple[int, ...] = bounded((512, 256), ge=1)
    batch_size: int = bounded(64, ge=1)
    class_batch_size: int = bounded(32, ge=1)
    lr: float = bounded(0.01, gt=0)
    class_ae_lr: float = bounded(0.003, gt=0)
    oracle_lr: float = bounded(0.002, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    check_images: int = bounded(2000, ge=1)
    eval_batch_size: int = bounded(1000, ge=1)

    def __post_init__(self) -> None:
        if not self.oracle_hidden:
            raise ConfigError("`oracle_hidden` = [] is empty; the oracle needs at least one hidden "
                              "layer (its last one is where the FID is measured)",
                              owner=MeasurementConfig, fields=("oracle_hidden",))


@dataclass
class TrainedMeasurement:
    """The trained models, their quality on `check`'s split and the training time."""

    models: MeasurementModels
    metrics: dict[str, float]
    seconds: float


def _optimiser(model: nn.Module, lr: float, steps: int
               ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1),
                                                pct_start=0.15)
    return opt, sched


def _step(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
          loss: torch.Tensor, what: str, epoch: int, step: int) -> None:
    check_finite(loss, what, epoch, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()


def _pretrained_start(models: MeasurementModels, train: Split, cfg: MeasurementConfig,
                      device: torch.device, generator: torch.Generator, bf16: bool) -> None:
    """Train one autoencoder of the class autoencoders' architecture on all training images and
    copy it into every class's group: the class autoencoders' common starting point."""
    ae = models.class_aes
    one = ClassAutoencoders(ae.channels, 1).to(device)
    _train_on_images(one.forward_stacked, one, train, cfg.pretrain_epochs, cfg.lr, cfg,
                     device, generator, bf16, "class autoencoders' start", "mse")
    with torch.no_grad():
        for grouped, single in zip(ae.net, one.net):
            if isinstance(grouped, nn.Conv2d):
                grouped.weight.copy_(single.weight.repeat(ae.classes, 1, 1, 1))
                grouped.bias.copy_(single.bias.repeat(ae.classes))


def train_class_autoencoders(models: MeasurementModels, train: Split, cfg: MeasurementConfig,
                             device: torch.device, generator: torch.Generator, bf16: bool) -> None:
    """Each class's autoencoder on the training images of its class (after `_pretrained_start`
    when `cfg.pretrain_epochs` > 0)."""
    ae = models.class_aes
    members = [torch.nonzero(train.y == c).flatten() for c in range(ae.classes)]
    if any(len(m) == 0 for m in members):
        missing = [c for c, m in enumerate(members) if len(m) == 0]
        raise ConfigError(f"the class autoencoders need training images of every class; none of "
                          f"class {missing}")
    if cfg.pretrain_epochs:
        _pretrained_start(models, train, cfg, device, generator, bf16)
    ae.to(memory_format=CONV_LAYOUT).train()
    b = cfg.class_batch_size
    steps_per_epoch = math.ceil(max(len(m) for m in members) / b)
    opt, sched = _optimiser(ae, cfg.class_ae_lr, steps_per_epoch * cfg.class_ae_epochs)
    for epoch in range(cfg.class_ae_epochs):
        orders = [m[torch.randperm(len(m), generator=generator)].to(train.x.device)
                  for m in members]
        for step in range(steps_per_epoch):
            at = torch.arange(step * b, (step + 1) * b)
            picked = torch.stack([o[(at % len(o)).to(o.device)] for o in orders], 1)  # B x K
            xs = scale(train.x[picked.flatten()]).to(device)
            xs = xs.view(b, -1, *xs.shape[2:])  # B x (K * C) x H x W
            xs = xs.contiguous(memory_format=CONV_LAYOUT)
            with autocast(device, bf16):
                out = ae.forward_stacked(xs)
            _step(opt, sched, F.mse_loss(out.float(), xs), "class autoencoders", epoch, step)
    ae.eval()


def _train_on_images(forward: Callable[[torch.Tensor], torch.Tensor], model: nn.Module,
                     train: Split, epochs: int, lr: float, cfg: MeasurementConfig,
                     device: torch.device, generator: torch.Generator, bf16: bool,
                     what: str, loss_fn: str) -> None:
    layout = CONV_LAYOUT if loss_fn == "mse" else torch.contiguous_format
    model.to(memory_format=layout).train()
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    opt, sched = _optimiser(model, lr, steps_per_epoch * epochs)
    for epoch in range(epochs):
        for step, idx in enumerate(index_batches(len(train), cfg.batch_size, generator,
                                                 train.x.device)):
            x = scale(train.x[idx]).to(device).contiguous(memory_format=layout)
            with autocast(device, bf16):
                out = forward(x)
            loss = (F.mse_loss(out.float(), x) if loss_fn == "mse"
                    else F.cross_entropy(out.float(), train.y[idx].to(device)))
            _step(opt, sched, loss, what, epoch, step)
    model.eval()


@torch.inference_mode()
def measurement_quality(models: MeasurementModels, split: Split, batch_size: int
                        ) -> dict[str, float]:
    """How well the models do on `split` (labelled images): each class autoencoder's mean squared
    error on its own class and on the other classes, the share of images whose own class's
    autoencoder reconstructs them best, the all-class autoencoder's error and the oracle's
    accuracy."""
    own, other, best, all_err, correct = [], [], [], [], []
    for i in range(0, len(split), batch_size):
        x = scale(split.x[i:i + batch_size]).contiguous(memory_format=torch.channels_last)
        y = split.y[i:i + batch_size].to(x.device)
        err = (models.class_aes(x) - x[:, None]).pow(2).flatten(2).mean(2)  # N x K
        mask = F.one_hot(y, err.shape[1]).bool()
        own.append(err[mask])
        other.append(err.masked_fill(mask, 0).sum(1) / (err.shape[1] - 1))
        best.append((err.argmin(1) == y).float())
        all_err.append((models.all_ae(x) - x).pow(2).flatten(1).mean(1))
        correct.append((models.oracle(x).argmax(1) == y).float())
    mean = {name: float(torch.cat(v).double().mean()) for name, v in (
        ("class_ae_mse_own_class", own), ("class_ae_mse_other_classes", other),
        ("class_ae_own_class_best", best), ("all_ae_mse", all_err),
        ("oracle_accuracy", correct))}
    return mean


def train_measurement_models(cfg: MeasurementConfig, data: Dataset, device: torch.device,
                             generator: torch.Generator) -> TrainedMeasurement:
    """Train the class autoencoders, the all-class autoencoder and the oracle on `data.train`
    (uint8 images), in that order from one seeded `generator`; check them on the first
    `cfg.check_images` validation images (`measurement_quality`)."""
    started = time.perf_counter()
    bf16 = use_bf16(cfg.precision, device)
    spec = MeasurementSpec(tuple(data.input_shape), data.num_classes, tuple(cfg.oracle_hidden))
    try:
        models = build(spec).to(device)
    except ValueError as exc:
        raise ConfigError(f"the measurement models do not fit {data.name} images: {exc}") from None
    train_class_autoencoders(models, data.train, cfg, device, generator, bf16)
    _train_on_images(models.all_ae, models.all_ae, data.train, cfg.all_ae_epochs, cfg.lr, cfg,
                     device, generator, bf16, "all-class autoencoder", "mse")
    _train_on_images(models.oracle, models.oracle, data.train, cfg.oracle_epochs, cfg.oracle_lr,
                     cfg, device, generator, bf16, "oracle", "ce")
    seconds = time.perf_counter() - started
    models.eval()
    n = min(cfg.check_images, len(data.val))
    check = Split(data.val.x[:n], data.val.y[:n])
    return TrainedMeasurement(models, measurement_quality(models, check, cfg.eval_batch_size),
                              seconds)
