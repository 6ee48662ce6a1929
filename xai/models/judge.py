"""The neutral judge (EVAL-X, Jethani et al., "Have we learned to explain?", AISTATS 2021).

A surrogate of the black box trained once on inputs of which a *random* subset of chunks is kept,
against the black box's stored probabilities. The subset size is drawn uniformly over the whole
range (0 to every chunk; `JudgeConfig` can narrow it or draw it log-uniformly), the subset
uniformly among those of that size, independently of the image, so the judge learns what partial
images mean and nothing about where an explainer looks: it cannot reward a method for encoding
the class in the position of its chunks.

The judge sees the filled image and the keep-mask as one more input channel, so it can tell a
removed chunk from a dark one. Removed pixels are filled with 0 or, for a share of each batch,
with ROAD's noisy linear imputation (`xai.data.imputation`), the two fills the evaluation uses. It has
the black box's architecture (one more input channel) and by default starts from its weights
(the mask channel's weights start at 0), which makes it a close surrogate in a short training.
With `mirror`, its answers (in eval mode) are the mean logits over the image and its left-right
mirror image, test-time augmentation as airbench's black box uses it: a steadier judge for classes
a flip keeps (CIFAR-10's), never for digits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from xai.chunks import expand, num_chunks, random_chunk_masks
from xai.data.imputation import fill
from xai.errors import CheckpointError
from xai.io import load_torch, save_torch
from xai.models.blackbox import Architecture
from xai.tensors import autocast, state_dict_cpu, to_unit

KIND = "xai.judge"


class Judge(nn.Module):
    """`judge(filled, keep)`: class logits of images whose pixels outside `keep` were removed
    (in eval mode with `mirror`: the mean over the image and its mirror image, mask mirrored too)."""

    def __init__(self, spec: Architecture, chunk: int, mirror: bool = False) -> None:
        super().__init__()
        self.spec = spec
        self.chunk = chunk
        self.mirror = mirror
        self.net = Architecture(spec.arch, spec.in_channels + 1, spec.num_classes,
                                spec.image_size, spec.channels).build()

    def forward(self, filled: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        shown = torch.cat([filled, keep[:, :1].to(filled.dtype)], dim=1)
        logits = self.net(shown)
        if self.mirror and not self.training:
            logits = (logits + self.net(shown.flip(-1))) / 2
        return logits

    def chunk_keep(self, chunk_mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """N x d chunk masks (shared by the channels) -> N x C x H x W pixel masks."""
        return expand(chunk_mask, shape, self.chunk)

    def start_from(self, blackbox: nn.Module) -> None:
        """Copy the black box's weights, so the judge starts as the black box does: a layer that
        grew with the mask channel (the first convolution; airbench's whitening layer also has
        more filters, and the layer after it more inputs) takes them in its leading block, its
        extra inputs start at 0 and its extra filters keep their fresh initialisation."""
        own = self.net.state_dict()
        for key, value in blackbox.state_dict().items():
            if own[key].shape == value.shape:
                own[key] = value.clone()
                continue
            if own[key].dim() > 1:
                own[key][:, value.shape[1]:] = 0
            own[key][tuple(slice(0, n) for n in value.shape)] = value
        self.net.load_state_dict(own)


@torch.inference_mode()
def agreement(judge: Judge, x: torch.Tensor, reference: torch.Tensor, generator: torch.Generator,
              budget: int | None = None, imputed: bool = False, noise_std: float = 0.01,
              batch_size: int = 1024, amp: bool = False) -> torch.Tensor:
    """Per image: does the judge, shown a random subset of `budget` chunks (None: a uniform
    budget), agree with `reference` (the black box's class)? `amp`: its passes in bf16."""
    was_training = judge.training
    judge.eval()
    shape = tuple(x.shape[1:])
    d = num_chunks(shape, judge.chunk)
    out = []
    for i in range(0, len(x), batch_size):
        xb = to_unit(x[i:i + batch_size]) if x.dtype == torch.uint8 else x[i:i + batch_size]
        keep = judge.chunk_keep(random_chunk_masks(len(xb), d, generator, budget,
                                                   device=xb.device), shape)
        filled = fill(xb, keep, imputed, noise_std, generator)
        with autocast(xb.device, amp):
            out.append(judge(filled, keep).argmax(1))
    judge.train(was_training)
    return torch.cat(out) == reference


def save_judge(judge: Judge, path: str | Path, **extra: Any) -> None:
    """{"kind", "architecture", "chunk", "state_dict", ...}: loadable with weights_only."""
    save_torch({"kind": KIND, "architecture": judge.spec.to_state(), "chunk": judge.chunk,
                "state_dict": state_dict_cpu(judge), **extra}, path)


def load_judge(path: str | Path, device: torch.device | str = "cpu", mirror: bool = False) -> Judge:
    """Load a judge written by `save_judge` (weights_only=True), in eval mode, on `device`, its
    answers averaged over the mirror image when `mirror` (a readout, not stored with the weights)."""
    state = load_torch(path, kind=KIND, required=("architecture", "chunk", "state_dict"))
    try:
        judge = Judge(Architecture.from_state(state["architecture"]), int(state["chunk"]), mirror)
        judge.load_state_dict(state["state_dict"])
    except (TypeError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path} does not hold a judge this code can rebuild "
                              f"({str(exc).strip().splitlines()[0]})") from None
    return judge.to(device).eval()
