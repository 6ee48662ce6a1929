"""The neutral judge (EVAL-X, Jethani et al., "Have we learned to explain?", AISTATS 2021).

A surrogate of the black box trained once on inputs of which a *random* subset of chunks is kept,
against the black box's stored probabilities. The subset size is drawn uniformly over the whole
range (0 to every chunk), the subset uniformly among those of that size, independently of the
image, so the judge learns what partial images mean and nothing about where an explainer looks:
it cannot reward a method for encoding the class in the position of its chunks.

The judge sees the filled image and the keep-mask as one more input channel, so it can tell a
removed chunk from a dark one. Removed pixels are filled with 0 or, for a share of each batch,
with ROAD's noisy linear imputation (`xai.evaluation.imputation`), the two fills the evaluation uses. It has
the black box's architecture (one more input channel) and by default starts from its weights
(the mask channel's weights start at 0), which makes it a close surrogate in a short training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from xai.models.blackbox import Architecture
from xai.errors import CheckpointError
from xai.evaluation.imputation import noisy_linear_impute
from xai.io import load_torch, save_torch
from xai.evaluation.measures import chunk_grid, expand
from xai.train.loop import History, Progress, check_finite, index_batches, state_dict_cpu, to_unit

KIND = "xai.judge"


def random_chunk_masks(n: int, chunks: int, generator: torch.Generator,
                       budget: int | torch.Tensor | None = None,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """N x `chunks` boolean masks: `budget` chunks kept per row (a number, one per row, or None:
    uniform over 0..chunks), the kept subset uniform among those of that size."""
    noise = torch.rand(n, chunks, generator=generator, device=generator.device)
    if budget is None:
        budget = torch.randint(0, chunks + 1, (n,), generator=generator, device=generator.device)
    budget = torch.as_tensor(budget, device=noise.device).reshape(-1, 1)
    rank = noise.argsort(1).argsort(1)  # a uniformly random permutation of 0..chunks-1 per row
    return (rank < budget).to(device)


def fill(x: torch.Tensor, keep: torch.Tensor, imputed: torch.Tensor | bool = False,
         noise_std: float = 0.01, generator: torch.Generator | None = None) -> torch.Tensor:
    """`x` with the pixels outside `keep` (N x 1 or C x H x W, 0/1) removed: set to 0, or, where
    `imputed` (per row, or all), filled by noisy linear imputation."""
    keep = keep.to(x.dtype)
    out = x * keep
    rows = torch.as_tensor(imputed, device=x.device).expand(len(x)) if isinstance(imputed, bool) \
        else imputed.to(x.device)
    if rows.any():
        idx = rows.nonzero().squeeze(1)
        out = out.index_copy(0, idx, noisy_linear_impute(x[idx], keep[idx] > 0.5, noise_std,
                                                         generator))
    return out


class Judge(nn.Module):
    """`judge(filled, keep)`: class logits of images whose pixels outside `keep` were removed."""

    def __init__(self, spec: Architecture, chunk: int) -> None:
        super().__init__()
        self.spec = spec
        self.chunk = chunk
        self.net = Architecture(spec.arch, spec.in_channels + 1, spec.num_classes,
                                spec.image_size, spec.width).build()

    def forward(self, filled: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([filled, keep[:, :1].to(filled.dtype)], dim=1))

    def chunk_keep(self, chunk_mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """N x d chunk masks (shared by the channels) -> N x C x H x W pixel masks."""
        return expand(chunk_mask, shape, self.chunk)

    def start_from(self, blackbox: nn.Module) -> None:
        """Copy the black box's weights; the mask channel's input weights start at 0."""
        own = self.net.state_dict()
        for key, value in blackbox.state_dict().items():
            if own[key].shape == value.shape:
                own[key] = value.clone()
            else:  # the first convolution: one more input channel
                own[key].zero_()
                own[key][:, :value.shape[1]] = value
        self.net.load_state_dict(own)


def num_chunks(shape: tuple[int, ...], chunk: int) -> int:
    """Chunks (shared by the channels) of C x H x W images."""
    _, rows, cols = chunk_grid(shape, chunk)
    return rows * cols


@dataclass(frozen=True)
class JudgeTraining:
    """How the judge is trained (the pipeline fills it from params.yaml `judge`)."""

    epochs: int = 2
    batch_size: int = 128
    lr: float = 1e-3
    imputed_fraction: float = 0.5
    noise_std: float = 0.01
    start_from_blackbox: bool = True


def train_judge(judge: Judge, x: torch.Tensor, probs: torch.Tensor, settings: JudgeTraining,
                generator: torch.Generator, history: History, val: tuple[torch.Tensor,
                torch.Tensor] | None = None, desc: str = "judge", show_progress: bool = True
                ) -> Judge:
    """Train `judge` in place on uint8 images `x` against the black box's probabilities `probs`,
    each batch with fresh random chunk subsets; a history row per epoch (validation agreement on
    random masks when `val` = (images, probabilities) is given)."""
    device = x.device
    shape = tuple(x.shape[1:])
    d = num_chunks(shape, judge.chunk)
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
            keep = judge.chunk_keep(random_chunk_masks(len(idx), d, mask_gen, device=device),
                                    shape)
            imputed = torch.rand(len(idx), generator=mask_gen, device=device) \
                < settings.imputed_fraction
            filled = fill(xb, keep, imputed, settings.noise_std, mask_gen)
            loss = -(pb * F.log_softmax(judge(filled, keep).float(), 1)).sum(1).mean()
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
            row["val_agreement"] = agreement(judge, val[0], val[1].argmax(1), g).float().mean(
            ).item()
        history.log(epoch, row)
    return judge.eval()


@torch.inference_mode()
def agreement(judge: Judge, x: torch.Tensor, reference: torch.Tensor, generator: torch.Generator,
              budget: int | None = None, imputed: bool = False, noise_std: float = 0.01,
              batch_size: int = 1024) -> torch.Tensor:
    """Per image: does the judge, shown a random subset of `budget` chunks (None: a uniform
    budget), agree with `reference` (the black box's class)?"""
    was_training = judge.training
    judge.eval()
    shape = tuple(x.shape[1:])
    d = num_chunks(shape, judge.chunk)
    out = []
    for i in range(0, len(x), batch_size):
        xb = to_unit(x[i:i + batch_size]) if x.dtype == torch.uint8 else x[i:i + batch_size]
        keep = judge.chunk_keep(random_chunk_masks(len(xb), d, generator, budget,
                                                   device=xb.device), shape)
        out.append(judge(fill(xb, keep, imputed, noise_std, generator), keep).argmax(1))
    judge.train(was_training)
    return torch.cat(out) == reference


def save_judge(judge: Judge, path: str | Path, **extra: Any) -> None:
    """{"kind", "architecture", "chunk", "state_dict", ...}: loadable with weights_only."""
    save_torch({"kind": KIND, "architecture": asdict(judge.spec), "chunk": judge.chunk,
                "state_dict": state_dict_cpu(judge), **extra}, path)


def load_judge(path: str | Path, device: torch.device | str = "cpu") -> Judge:
    """Load a judge written by `save_judge` (weights_only=True), in eval mode, on `device`."""
    state = load_torch(path, kind=KIND, required=("architecture", "chunk", "state_dict"))
    try:
        judge = Judge(Architecture(**state["architecture"]), int(state["chunk"]))
        judge.load_state_dict(state["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path} does not hold a judge this code can rebuild "
                              f"({str(exc).strip().splitlines()[0]})") from None
    return judge.to(device).eval()
