"""Training and checking the invertible classifiers of stage `train_invertible`.

The toy classifier is trained with the reference setup (SGD with momentum, step decay) from
`restarts` independent initialisations in lockstep; the one with the lowest final training loss is
kept. About half of the runs of the 162-parameter reference net end near a linear boundary once
its ReLUs die (train loss ~0.21 vs ~0.1 on moons), and the training loss tells those runs apart
without looking at test data. The image classifier is trained with
Adam and a one-cycle schedule. `check` measures what the issue asks of both: test accuracy, the
reconstruction error of `T` and the residual of the projections onto the decision boundary.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.flop_counter import FlopCounterMode

from xai.data.augment import dequantize
from xai.data.prepared import Dataset
from xai.errors import ConfigError
from xai.models.invertible import InvertibleClassifier, image_classifier, toy_classifier
from xai.settings import bounded
from xai.tensors import to_unit
from xai.train.loop import (
    Distributed,
    History,
    Progress,
    accuracy,
    check_finite,
    cpu_threads,
    index_batches,
)


@dataclass(frozen=True)
class InvertibleImageConfig:
    """The image invertible classifier: one entry per stage in each list, and its training."""

    downsample: tuple[int, ...] = bounded((2, 2), ge=2)
    blocks: tuple[int, ...] = bounded((4, 4), ge=0)
    hidden: tuple[int, ...] = bounded((32, 64), ge=1)
    kernel: tuple[int, ...] = bounded((3, 3), ge=1)
    split: tuple[bool, ...] = (True, False)
    means: Literal["fixed", "learned"] = "learned"
    epochs: int = bounded(7, ge=1)
    batch_size: int = bounded(128, ge=1)
    lr: float = bounded(0.001, gt=0)
    warmup: float = bounded(0.1, ge=0, lt=1)
    separation: float = bounded(1.0, gt=0)
    nll_weight: float = bounded(1.0, ge=0)
    noise: float = bounded(0.6, ge=0)
    clip: float = bounded(50.0, gt=0)
    eval_batch_size: int = bounded(1000, ge=1)
    threads: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        stages = len(self.downsample)
        if stages == 0:
            raise ConfigError("`downsample` must name at least one stage",
                              owner=InvertibleImageConfig, fields=("downsample",))
        for name in ("blocks", "hidden", "kernel", "split"):
            if len(getattr(self, name)) != stages:
                raise ConfigError(
                    f"`{name}` = {list(getattr(self, name))} needs one entry per "
                    f"stage, like `downsample` = {list(self.downsample)}",
                    owner=InvertibleImageConfig, fields=(name, "downsample"))
        if any(k % 2 == 0 for k in self.kernel):
            raise ConfigError(
                f"`kernel` = {list(self.kernel)} is not allowed; kernels must be "
                "odd (1, 3, 5, ...) so that a subnet keeps the feature map's size",
                owner=InvertibleImageConfig, fields=("kernel",))


@dataclass(frozen=True)
class InvertibleToyConfig:
    """The toy invertible classifier and its training (defaults: the reference setup)."""

    blocks: int = bounded(6, ge=1)
    hidden: int = bounded(4, ge=1)
    lr: float = bounded(0.1, gt=0)
    momentum: float = bounded(0.9, ge=0, lt=1)
    epochs: int = bounded(60, ge=1)
    milestones: tuple[int, ...] = bounded((20, 40), ge=1)
    gamma: float = bounded(0.1, gt=0, le=1)
    batch_size: int = bounded(128, ge=1)
    restarts: int = bounded(10, ge=1)

    def __post_init__(self) -> None:
        if (list(self.milestones) != sorted(set(self.milestones))
                or any(m > self.epochs for m in self.milestones)):
            raise ConfigError(
                f"`milestones` = {list(self.milestones)} is not allowed; use increasing values "
                f"<= `epochs` = {self.epochs}", owner=InvertibleToyConfig,
                fields=("milestones", "epochs"))

#: Seed offset between toy restarts; restart 0 is the plain run with the configured seed.
RESTART_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class ImageTraining:
    """The trained image classifier and what its training cost."""

    model: InvertibleClassifier
    seconds: float
    images_per_second: float
    flops_per_image: float     # one training step (forward + backward), per image


class ToyRestarts:
    """`k` toy classifiers with stacked parameters, evaluated together with `torch.func.vmap`.

    Summing the restarts' losses gives each its own gradient (their parameters are disjoint) and
    SGD with momentum updates every element on its own, so training them together equals training
    them one after another, at the Python overhead of one.
    """

    def __init__(self, models: list[InvertibleClassifier]) -> None:
        self.models = models
        self.params, self.buffers = stack_module_state(models)
        skeleton = copy.deepcopy(models[0]).to("meta")
        self._logits = vmap(lambda p, b, x: functional_call(skeleton, (p, b), (x,)))

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-restart mean cross-entropy and accuracy on per-restart batches `x` (k x B x D)."""
        logits = self._logits(self.params, self.buffers, x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        correct = (logits.argmax(dim=-1) == y).float()
        return loss.view(y.shape).mean(dim=1), correct.mean(dim=1)

    def model(self, r: int) -> InvertibleClassifier:
        """Restart `r` as an ordinary classifier."""
        model = self.models[r]
        model.load_state_dict({k: v[r].detach() for k, v in {**self.params,
                                                               **self.buffers}.items()})
        return model.eval()


def train_toy(cfg: InvertibleToyConfig, ds: Dataset, seed: int, device: torch.device,
              history: History, progress: bool = True) -> tuple[InvertibleClassifier, int]:
    """Train `cfg.restarts` toy classifiers together; return the best by final training loss.

    Restart `r` has its own initialisation and batch order from seed `seed + r * stride`, so
    restart 0 is the plain reference run. The per-epoch training loss and accuracy (whole training
    set) of every restart go to `history` as `train_loss_<r>`, `train_accuracy_<r>`. Runs on one
    thread: for a 162-parameter net, intra-op threads only add synchronisation.
    """
    train = ds.train
    models, generators = [], []
    for r in range(cfg.restarts):
        torch.manual_seed(seed + r * RESTART_SEED_STRIDE)
        models.append(toy_classifier(train.x.shape[1], ds.num_classes, cfg.blocks,
                                     cfg.hidden).to(device))
        generators.append(torch.Generator().manual_seed(seed + r * RESTART_SEED_STRIDE))
    restarts = ToyRestarts(models)
    optimizer = torch.optim.SGD(restarts.params.values(), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), cfg.gamma)
    steps = math.ceil(len(train) / cfg.batch_size)
    bar = Progress(cfg.epochs * steps, f"toy ({cfg.restarts} restarts)", progress)
    whole = torch.arange(len(train), device=device).expand(cfg.restarts, -1)
    with cpu_threads(1):
        for epoch in range(1, cfg.epochs + 1):
            lr = scheduler.get_last_lr()[0]
            orders = [index_batches(len(train), cfg.batch_size, g, device) for g in generators]
            for step, idx in enumerate(torch.stack(parts) for parts in zip(*orders)):
                loss, _ = restarts.losses(train.x[idx], train.y[idx])
                check_finite(loss, "train_invertible (toy)", epoch, step)
                optimizer.zero_grad(set_to_none=True)
                loss.sum().backward()
                optimizer.step()
                bar.step(idx.numel(), loss=float(loss.detach().min()))
            scheduler.step()
            with torch.inference_mode():
                losses, accuracies = restarts.losses(train.x[whole], train.y[whole])
            history.log(epoch, {"lr": lr,
                                **{f"train_loss_{r}": float(v) for r, v in enumerate(losses)},
                                **{f"train_accuracy_{r}": float(v)
                                   for r, v in enumerate(accuracies)}})
    bar.close()
    best = int(losses.argmin())
    return restarts.model(best), best


class JointLogProb(torch.nn.Module):
    """`x -> log p(x, y)` for every class (what the hybrid loss reads), as a module's forward, so
    DistributedDataParallel can wrap it."""

    def __init__(self, model: InvertibleClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.log_joint(x)


def hybrid_loss(log_joint: torch.Tensor, y: torch.Tensor, dims: int, nll_weight: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the posterior plus `nll_weight` times `-log p(x | y)` per dimension
    (nats), from `log p(x, y)` (N x classes) of `D`-dimensional inputs; also returns that NLL."""
    classes = log_joint.shape[1]
    ce = F.cross_entropy(log_joint, y)
    nll = -(log_joint.gather(1, y[:, None])[:, 0] + math.log(classes)).mean() / dims
    return ce + nll_weight * nll, nll


def train_image(cfg: InvertibleImageConfig, ds: Dataset, device: torch.device,
                generator: torch.Generator, history: History, progress: bool = True,
                dist: Distributed = Distributed()) -> ImageTraining:
    """Train the image flow on `ds.train` (uint8 images) with the hybrid objective (Nalisnick et
    al., 2019): cross-entropy plus `cfg.nll_weight` times the negative log-likelihood per
    dimension of the dequantised images, validating after each epoch.

    Every dequantised training image gets Gaussian noise of standard deviation `cfg.noise` in
    the flow's logit coordinates (after `Logit`, which maps pixels to the real line), as IB-INN
    (Ardizzone et al., 2020) trains with input noise: without it the flow spends its latent space
    on the 1/256-wide peaks of black and white pixels, and the direction between classes becomes
    one that faint pixel changes move along (crossed counterfactuals then change pixels the black
    box ignores). In logit coordinates the noise blurs those peaks without teaching the flow
    pixels far brighter than white or darker than black: near 0 and 1 it is a few hundredths of
    a pixel, and two standard deviations stay within 0.04 of [0, 1] (pixel-space noise of 0.02
    gave out-of-range counterfactuals more often, at lower accuracy). The training bits/dim are
    then those of the noisy images.

    The caller seeds torch (initialisation); `generator` orders the batches and draws the
    dequantisation noise (for the whole global batch, so every rank under torchrun sees what one
    process would). ActNorm layers start from the first batch's statistics. Adam with a one-cycle
    schedule; gradients clipped to norm `cfg.clip`. `seconds` counts the training steps only.
    """
    net = image_classifier(ds.input_shape, ds.num_classes, cfg.downsample, cfg.blocks,
                           cfg.hidden, cfg.kernel, cfg.separation, cfg.split,
                           cfg.means).to(device)
    train = ds.train
    dims = math.prod(ds.input_shape)
    batches = [index_batches(len(train), cfg.batch_size, generator, device)
               for _ in range(cfg.epochs)]
    first = batches[0][0]
    net.net.initialize(dequantize(train.x[first], torch.rand(train.x[first].shape,
                                                         generator=generator).to(device)))
    model = dist.wrap(JointLogProb(net), device)
    steps = len(batches[0])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps, pct_start=cfg.warmup)
    flops_per_image = _training_flops_per_image(net, to_unit(train.x[:cfg.batch_size]),
                                                train.y[:cfg.batch_size], cfg.nll_weight)
    seconds = 0.0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        bar = Progress(steps, f"image epoch {epoch}/{cfg.epochs}", progress and dist.is_main)
        total = torch.zeros((), device=device)
        total_nll = torch.zeros((), device=device)
        start = time.perf_counter()
        for step, batch in enumerate(batches[epoch - 1]):
            shape = (len(batch), *ds.input_shape)
            noise = torch.rand(shape, generator=generator).to(device)
            idx = dist.shard(batch)
            x = dequantize(train.x[idx], dist.shard(noise))
            if cfg.noise:
                logit = net.net.layers[0]
                x = logit.inverse(logit(x) + cfg.noise * dist.shard(
                    torch.randn(shape, generator=generator).to(device)))
            loss, nll = hybrid_loss(model(x), train.y[idx], dims, cfg.nll_weight)
            check_finite(loss, "train_invertible (image)", epoch, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            optimizer.step()
            scheduler.step()
            total += loss.detach() * len(idx)
            total_nll += nll.detach() * len(idx)
            if step % 20 == 0:
                bar.step(len(batch), loss=float(loss.detach()),
                         bpd=float(nll.detach()) / math.log(2) + 8)
            else:
                bar.step(len(batch))
        seconds += time.perf_counter() - start
        bar.close()
        net.eval()
        val_accuracy = accuracy(net, ds.val, cfg.eval_batch_size) if len(ds.val) else math.nan
        scale = dist.world_size / len(train)
        history.log(epoch, {"train_loss": float(total) * scale,
                            "train_bits_per_dim": float(total_nll) * scale / math.log(2) + 8,
                            "val_accuracy": val_accuracy, "lr": scheduler.get_last_lr()[0]})
    return ImageTraining(net, seconds, cfg.epochs * len(train) / seconds, flops_per_image)


def _training_flops_per_image(model: InvertibleClassifier, x: torch.Tensor, y: torch.Tensor,
                              nll_weight: float) -> float:
    """FLOPs of one forward + backward pass of the hybrid loss per image, counted by torch on
    one batch."""
    with FlopCounterMode(display=False) as counter:
        hybrid_loss(model.log_joint(x), y, x[0].numel(), nll_weight)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(x)


