"""Explanation-quality measures on chunk score maps, the same for every method.

Every method's attribution is reduced to one score per chunk (an s x s patch, optionally per
channel); a pixel budget is a number of chunks kept. Measures:
- post-hoc agreement: the model on the input with only the top-k chunks kept agrees with its own
  prediction on the whole input;
- deletion / insertion curves: the model's probability for its original prediction as the most
  important chunks are removed from the input (deletion, lower is better) or added to a blank
  input (insertion, higher is better), with the area under each curve;
- sparseness: the Gini index of the absolute chunk scores, scaled so a one-hot map scores 1 and a
  uniform map 0.
All of it is batched over images and curve points; nothing loops over single images.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from xai.chunks import expand, ranking

Model = Callable[[torch.Tensor], torch.Tensor]  # float images -> logits
Fill = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, 0/1 keep mask) -> images


@torch.inference_mode()
def posthoc_agreement(model: Model, x: torch.Tensor, keep: torch.Tensor,
                      reference: torch.Tensor) -> torch.Tensor:
    """Per image: does the model's argmax on `x * keep` equal `reference` (its own prediction)?"""
    return agrees_on(model, x * keep, reference)


@torch.inference_mode()
def agrees_on(model: Model, filled: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image: does the model's argmax on `filled` (images with chunks removed, filled with 0 or
    otherwise, e.g. by ROAD's imputation) equal `reference`?"""
    return model(filled).argmax(1) == reference


@torch.inference_mode()
def deletion_insertion(model: Model, x: torch.Tensor, scores: torch.Tensor, target: torch.Tensor,
                       chunk: int, per_channel: bool = False, points: int = 17,
                       batch_size: int = 4096, fill: Fill | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves (N x points) over the fraction of chunks, and that fraction.

    At point j the top round(j / (points - 1) * d) chunks are removed from `x` for deletion, or
    are the only ones kept for insertion; the curve is the model's softmax probability of
    `target`. Removed pixels are set to 0 (the blank baseline) or filled by `fill(x, keep)`.
    Insertion with a fill is ROAD's least-relevant-first curve read from the other end (at a
    fraction f, LeRF has removed the 1 - f least relevant chunks), so its area is LeRF's.
    """
    n, d = scores.shape
    fractions = torch.linspace(0, 1, points, device=x.device)
    counts = (fractions * d).round().long()
    rank_of = torch.empty_like(scores, dtype=torch.long)
    rank_of.scatter_(1, ranking(scores), torch.arange(d, device=x.device).expand(n, d))
    curves = []
    for kept_first in (False, True):  # deletion, then insertion
        probs = torch.empty(points, n, device=x.device)
        # rows (point j, image i) in one flat range, so every model call (and every fill) takes
        # a full batch: points x images / batch_size calls, not points x ceil(images / batch_size)
        for start in range(0, points * n, batch_size):
            rows = torch.arange(start, min(start + batch_size, points * n), device=x.device)
            point, image = rows // n, rows % n
            top = rank_of[image] < counts[point, None]  # rows x d: the most important chunks
            pixels = expand(top if kept_first else ~top, tuple(x.shape[1:]), chunk, per_channel)
            xb = x[image]
            filled = xb * pixels if fill is None else fill(xb, pixels)
            p = model(filled).float().softmax(1)
            probs.view(-1)[rows] = p.gather(1, target[image, None]).squeeze(1)
        curves.append(probs.T)
    return curves[0], curves[1], fractions


def auc(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Area under each row of `curve` over `fractions` (trapezoid rule)."""
    return torch.trapezoid(curve, fractions, dim=1)


def sparseness(scores: torch.Tensor) -> torch.Tensor:
    """Gini index of |scores| per row, scaled to 1 for one-hot and 0 for uniform rows."""
    a = scores.abs().flatten(1).double()
    d = a.shape[1]
    a, _ = torch.sort(a, dim=1)
    idx = torch.arange(1, d + 1, device=a.device, dtype=a.dtype)
    total = a.sum(1).clamp_min(torch.finfo(a.dtype).tiny)
    gini = ((2 * idx - d - 1) * a).sum(1) / (d * total)
    return (gini * d / (d - 1)).float()
