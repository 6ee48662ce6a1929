"""Training the black box (`xai.models.blackbox`) on tensors: optimizer, schedule, augmentation,
one epoch loop with validation, and its outputs (probabilities on every split)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xai.data.augment import random_crop, random_flip
from xai.data.prepared import Dataset
from xai.devices import use_bf16
from xai.models.blackbox import Architecture, BlackboxConfig, architecture
from xai.tensors import autocast, predict, to_unit, unwrap
from xai.train.loop import Distributed, History, Progress, check_finite, index_batches


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
        val_loss, val_acc = loss_and_accuracy(unwrap(model), data.val.x, data.val.y, cfg.eval_batch_size)
        history.log(epoch, {"train_loss": loss_sum.item() / seen,
                            "train_accuracy": correct.item() / seen,
                            "val_loss": val_loss, "val_accuracy": val_acc,
                            "lr": opt.param_groups[0]["lr"]})
    return TrainedBlackbox(unwrap(model).eval(), spec, history, sum(rates) / len(rates), mode)


def loss_and_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int
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
