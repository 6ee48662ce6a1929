"""Training the neutral judge (`xai.models.judge`) on random chunk subsets of the training
images, against the black box's stored probabilities."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F

from xai.chunks import num_chunks, random_chunk_masks
from xai.data.imputation import fill
from xai.devices import CONV_LAYOUT, use_bf16
from xai.models.judge import Judge, agreement
from xai.settings import bounded
from xai.tensors import autocast, to_unit
from xai.train.loop import History, Progress, check_finite, index_batches


@dataclass(frozen=True)
class JudgeConfig:
    """The neutral judge's training: a surrogate of the black box on random chunk subsets."""

    epochs: int = bounded(2, ge=1)
    batch_size: int = bounded(128, ge=1)
    lr: float = bounded(1e-3, gt=0)  # Adam, one-cycle schedule
    imputed_fraction: float = bounded(0.5, ge=0, le=1)  # share of each batch filled by ROAD
    # subset sizes: from this share of the chunks to all of them, uniform on `budget_scale`
    # (linear; log: each doubling alike, where the evaluation's budgets lie)
    min_share: float = bounded(0.0, ge=0, le=1)
    budget_scale: Literal["linear", "log"] = "linear"
    start_from_blackbox: bool = True  # `Judge.start_from` the black box's weights before training
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # of the training steps (`xai.devices`)
    # answers averaged over the mirror image (`Judge.mirror`): a readout, training is unchanged
    mirror: bool = False


def train_judge(judge: Judge, x: torch.Tensor, probs: torch.Tensor, settings: JudgeConfig,
                generator: torch.Generator, history: History, val: tuple[torch.Tensor,
                torch.Tensor] | None = None, noise_std: float = 0.01, desc: str = "judge",
                show_progress: bool = True) -> Judge:
    """Train `judge` in place on uint8 images `x` against the black box's probabilities `probs`,
    each batch with fresh random chunk subsets (a share of them filled by ROAD's imputation with
    `noise_std`); a history row per epoch (validation agreement on random masks when `val` =
    (images, probabilities) is given). `settings.start_from_blackbox` is the caller's to apply.
    In bf16 the judge is left channels-last (`xai.devices.CONV_LAYOUT`), the layout the CPU's bf16
    convolutions run fastest in."""
    device = x.device
    shape = tuple(x.shape[1:])
    d = num_chunks(shape, judge.chunk)
    low = math.ceil(settings.min_share * d)
    amp = use_bf16(settings.precision, device)
    if amp:
        judge.to(memory_format=CONV_LAYOUT)
    opt = torch.optim.Adam(judge.parameters(), lr=settings.lr)
    steps = max(len(x) // settings.batch_size, 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr,
                                                total_steps=steps * settings.epochs, pct_start=0.2)
    mask_gen = torch.Generator(device=device).manual_seed(int(torch.randint(
        0, 2 ** 31 - 1, (1,), generator=generator)))
    for epoch in range(1, settings.epochs + 1):
        judge.train()
        bar = Progress(steps, f"{desc} epoch {epoch}/{settings.epochs}", show_progress)
        loss_sum = torch.zeros((), device=device)
        for step, idx in enumerate(index_batches(len(x), settings.batch_size, generator, device,
                                                 drop_last=True)[:steps]):
            xb, pb = to_unit(x[idx]), probs[idx]
            keep = judge.chunk_keep(random_chunk_masks(len(idx), d, mask_gen, device=device,
                                                       low=low, scale=settings.budget_scale),
                                    shape)
            imputed = torch.rand(len(idx), generator=mask_gen, device=device) \
                < settings.imputed_fraction
            filled = fill(xb, keep, imputed, noise_std, mask_gen)
            with autocast(device, amp):
                logits = judge(filled, keep)
            loss = -(pb * F.log_softmax(logits.float(), 1)).sum(1).mean()
            check_finite(loss, desc, epoch, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            bar.step(len(idx), **({"loss": loss.item()} if step % 20 == 0 else {}))
        bar.close()
        row = {"train_loss": loss_sum.item() / steps, "lr": opt.param_groups[0]["lr"]}
        if val is not None:
            g = torch.Generator(device=device).manual_seed(epoch)
            row["val_agreement"] = agreement(judge, val[0], val[1].argmax(1), g, amp=amp
                                             ).float().mean(
            ).item()
        history.log(epoch, row)
    return judge.eval()
