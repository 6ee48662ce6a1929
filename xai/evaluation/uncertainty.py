"""95 % bootstrap intervals over images, and paired intervals of differences between methods.

Every per-image measure (a 0/1 agreement, an AUC, a correlation) is resampled with the same
resampled image indices for every method, so the interval of a difference between two methods
is the paired one: it keeps what the two share image by image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Interval:
    """A mean and its percentile bootstrap interval."""

    mean: float
    low: float
    high: float

    def text(self, fmt: str = ".3f") -> str:
        """`mean [low, high]`, every number in `fmt` (how the docs' tables show an interval)."""
        return f"{self.mean:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"


def resample_indices(n: int, resamples: int, seed: int) -> torch.Tensor:
    """`resamples` x `n` image indices drawn with replacement (seeded, on the CPU)."""
    return torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def bootstrap(values: torch.Tensor, indices: torch.Tensor, level: float = 0.95) -> Interval:
    """Mean of the per-image `values` (N) and its percentile interval over the resamples
    `indices` (B x M with M <= N: resamples of the first M images are taken as given)."""
    v = values.detach().double().cpu()
    idx = indices[:, :len(v)] % len(v) if indices.shape[1] != len(v) else indices
    means = v[idx].mean(1)
    alpha = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=means.dtype))
    return Interval(v.mean().item(), low.item(), high.item())


def paired_difference(a: torch.Tensor, b: torch.Tensor, indices: torch.Tensor,
                      level: float = 0.95) -> Interval:
    """Mean of `a - b` over images (the same images, in the same order) with its interval."""
    return bootstrap(a.double() - b.double(), indices, level)
