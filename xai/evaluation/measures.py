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
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]  # float images -> logits
Fill = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, 0/1 keep mask) -> images


def chunk_scores(attribution: torch.Tensor, chunk: int, per_channel: bool = False
                 ) -> torch.Tensor:
    """Sum of |attribution| over each chunk: N x C x H x W -> N x d (d = [C x] rows x cols).

    Where `chunk` does not divide H or W the last row or column of chunks is partial, as the
    explainers make it (`xai.explainers.chunk_grid`)."""
    a = attribution.abs()
    if not per_channel:
        a = a.sum(1, keepdim=True)
    h, w = a.shape[-2:]
    if h % chunk or w % chunk:
        a = F.pad(a, (0, -w % chunk, 0, -h % chunk))
    return (F.avg_pool2d(a, chunk) * chunk * chunk).flatten(1)


def chunk_areas(shape: tuple[int, ...], chunk: int, per_channel: bool = False) -> torch.Tensor:
    """1 x d: pixels (times channels, for shared chunks) in each chunk of C x H x W inputs."""
    return chunk_scores(torch.ones(1, *shape), chunk, per_channel)


def chunk_grid(shape: tuple[int, ...], chunk: int, per_channel: bool = False
               ) -> tuple[int, int, int]:
    """(channels of the mask, rows, cols) of the chunk grid of C x H x W inputs."""
    c, h, w = shape
    return (c if per_channel else 1), -(-h // chunk), -(-w // chunk)


def chunks_to_pixels(values: torch.Tensor, grid: tuple[int, int, int], chunk: int,
                     size: tuple[int, int]) -> torch.Tensor:
    """... x d chunk values -> ... x channels x H x W: each value on its chunk's pixels (nearest
    up-sampling; partial chunks at the bottom and right edge are cropped to `size`)."""
    cells = values.reshape(*values.shape[:-1], *grid)
    pixels = cells.repeat_interleave(chunk, dim=-2).repeat_interleave(chunk, dim=-1)
    return pixels[..., :size[0], :size[1]]


def expand(chunk_mask: torch.Tensor, shape: tuple[int, ...], chunk: int,
           per_channel: bool = False) -> torch.Tensor:
    """N x d chunk mask -> N x C x H x W pixel mask (nearest up-sampling, shared channels)."""
    grid = chunk_grid(shape, chunk, per_channel)
    pixels = chunks_to_pixels(chunk_mask.to(torch.float32), grid, chunk, shape[1:])
    return pixels.expand(-1, shape[0], -1, -1)


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean N x d mask of the k highest scores per row (ties: lowest index first)."""
    order = ranking(scores)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(1, order[:, :k], True)


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Chunk indices from most to least important; a stable sort keeps ties deterministic."""
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


@torch.inference_mode()
def posthoc_agreement(model: Model, x: torch.Tensor, keep: torch.Tensor,
                      reference: torch.Tensor) -> torch.Tensor:
    """Per image: does the model's argmax on `x * keep` equal `reference` (its own prediction)?"""
    return model(x * keep).argmax(1) == reference


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
        probs = torch.empty(n, points, device=x.device)
        for j, count in enumerate(counts.tolist()):
            top = rank_of < count  # N x d: the `count` most important chunks
            keep = top if kept_first else ~top
            pixels = expand(keep, tuple(x.shape[1:]), chunk, per_channel)
            for i in range(0, n, batch_size):
                sl = slice(i, i + batch_size)
                filled = x[sl] * pixels[sl] if fill is None else fill(x[sl], pixels[sl])
                p = model(filled).float().softmax(1)
                probs[sl, j] = p.gather(1, target[sl, None]).squeeze(1)
        curves.append(probs)
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
