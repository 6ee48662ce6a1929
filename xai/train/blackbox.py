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
from xai.models.blackbox import Airbench, Architecture, BlackboxConfig, architecture
from xai.tensors import autocast, predict, to_unit, unwrap
from xai.train.loop import Distributed, History, Progress, check_finite, index_batches


def make_optimizer(cfg: BlackboxConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters; BatchNorm biases get `bias_lr_scale` x the
    learning rate and the weight decay over it, so their decay per step stays lr x weight_decay."""
    norms = [p for m in model.modules() if isinstance(m, nn.BatchNorm2d)
             for p in m.parameters(recurse=False) if p.requires_grad]
    norm_ids = {id(p) for p in norms}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in norm_ids]
    groups = [{"params": others}]
    if norms:
        groups.append({"params": norms, "lr": cfg.lr * cfg.bias_lr_scale,
                       "weight_decay": cfg.weight_decay / cfg.bias_lr_scale})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def triangle(step: int, total: int, start: float = 0.2, peak: float = 0.23, end: float = 0.07
             ) -> float:
    """airbench's schedule: the lr factor rises linearly from `start` to 1 over the first `peak`
    share of the steps, then falls linearly to `end`."""
    top = peak * total
    if step < top:
        return start + (1 - start) * step / top
    return 1 + (end - 1) * (step - top) / max(total - top, 1)


def _schedule(cfg: BlackboxConfig, opt: torch.optim.Optimizer, total_steps: int
              ) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps,
                                                   pct_start=0.25)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if cfg.schedule == "triangle":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: triangle(step, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


class Lookahead:
    """airbench's Lookahead: every `every` steps the weights (and BatchNorm statistics) move to a
    slow copy pulled towards them, `slow += (1 - decay) (fast - slow)`, with `decay` rising as
    0.95^5 (t / T)^3; at the end the model takes the slow copy (`finish`)."""

    def __init__(self, model: nn.Module, total_steps: int, every: int = 5) -> None:
        self.model, self.total, self.every = model, total_steps, every
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()
                     if v.is_floating_point()}

    @torch.no_grad()
    def _pull(self, decay: float) -> None:
        state = self.model.state_dict()
        for key, slow in self.slow.items():
            slow.lerp_(state[key], 1 - decay)
            state[key].copy_(slow)

    def step(self, step: int) -> None:
        """After optimizer step `step` (counted from 1)."""
        if step % self.every == 0:
            self._pull(0.95 ** 5 * (step / self.total) ** 3)

    def finish(self) -> None:
        self._pull(1.0)


class _Augmenter:
    """Random crops (zero or reflect fill) and left-right flips, at random or alternating: with
    `alternate_flips` each training image is mirrored in every other epoch, starting from a
    random half (airbench's derandomised flips), so every epoch pair sees both views of each."""

    def __init__(self, cfg: BlackboxConfig, channels: int, num_train: int,
                 generator: torch.Generator) -> None:
        self.cfg, self.generator = cfg, generator
        self.mode = cfg.augment if cfg.augment != "auto" else (
            "crop_flip" if channels == 3 else "none")
        self.first_flips = (torch.rand(num_train, generator=generator) < 0.5
                            if cfg.alternate_flips and self.mode == "crop_flip" else None)

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        if self.mode in ("crop", "crop_flip"):
            x = random_crop(x, self.cfg.crop_padding, self.generator, self.cfg.crop_fill)
        if self.mode == "crop_flip":
            if self.first_flips is None:
                x = random_flip(x, self.generator)
            else:
                flip = self.first_flips.to(idx.device)[idx] ^ (epoch % 2 == 0)
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


def _prepare_airbench(cfg: BlackboxConfig, model: nn.Module, train_x: torch.Tensor) -> None:
    """airbench's starting point: the whitening layer set from (up to 5,000) training images and
    frozen, the BatchNorm scales frozen at 1."""
    if not isinstance(model, Airbench):
        return
    model.init_whitening(to_unit(train_x[:5000]).float())
    model.whiten.weight.requires_grad_(False)
    model.whiten.bias.requires_grad_(cfg.whiten_bias_epochs > 0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.requires_grad_(False)


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
    model = spec.build().to(device)
    _prepare_airbench(cfg, model, data.train.x)
    model = dist.wrap(model.to(memory_format=torch.channels_last), device)
    opt = make_optimizer(cfg, model)
    steps = math.ceil(len(data.train) / cfg.batch_size)
    sched = _schedule(cfg, opt, steps * cfg.epochs)
    lookahead = Lookahead(unwrap(model), steps * cfg.epochs) if cfg.lookahead else None
    augment = _Augmenter(cfg, spec.in_channels, len(data.train), generator)
    amp = use_bf16(cfg.precision, device)
    rates = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if isinstance(unwrap(model), Airbench) and epoch > cfg.whiten_bias_epochs:
            unwrap(model).whiten.bias.requires_grad_(False)
        bar = Progress(steps, f"{stage} epoch {epoch}/{cfg.epochs}", enabled=dist.is_main)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        for step, idx in enumerate(index_batches(len(data.train), cfg.batch_size, generator,
                                                 device)):
            idx = dist.shard(idx)
            x = augment(to_unit(data.train.x[idx]), idx, epoch).contiguous(
                memory_format=torch.channels_last)
            y = data.train.y[idx]
            with autocast(device, amp):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            check_finite(loss, stage, epoch, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if lookahead is not None:
                lookahead.step((epoch - 1) * steps + step + 1)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            bar.step(len(y) * dist.world_size, **({"loss": loss.item()} if step % 20 == 0 else {}))
        bar.close()
        if lookahead is not None and epoch == cfg.epochs:
            lookahead.finish()
        rates.append(bar.items_per_second)
        seen = len(data.train) / dist.world_size
        val_loss, val_acc = loss_and_accuracy(unwrap(model), data.val.x, data.val.y, cfg.eval_batch_size)
        history.log(epoch, {"train_loss": loss_sum.item() / seen,
                            "train_accuracy": correct.item() / seen,
                            "val_loss": val_loss, "val_accuracy": val_acc,
                            "lr": opt.param_groups[0]["lr"]})
    return TrainedBlackbox(unwrap(model).eval(), spec, history, sum(rates) / len(rates), augment.mode)


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
