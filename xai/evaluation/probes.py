"""Small cross-fitted logistic probes: what a simple classifier can read from features, scored
out of sample (each image by a probe fitted on the other folds).

`class_from_mask_correct` reads the explained model's class from a selection mask alone (no pixel
values). That is the class predicted from *where* a method looks, not encoding: a faithful method
scores high wherever the class moves the evidence (see `xai.evaluation.encoding` for encoding).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int, weight_decay: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS (deterministic)."""
    w = torch.zeros(x.shape[1], classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def cross_fitting_folds(n: int, folds: int) -> list[torch.Tensor]:
    """Boolean test masks of `folds` interleaved folds over `n` images (every fold non-empty)."""
    fold = torch.arange(n) % folds
    return [fold == f for f in range(min(folds, n))]


def class_from_mask_correct(masks: torch.Tensor, classes: torch.Tensor, num_classes: int,
                            folds: int = 5, steps: int = 100, weight_decay: float = 1e-3
                            ) -> torch.Tensor:
    """Per image (bool): does a classifier of the masks alone (N x d, 0/1), fitted on the other
    folds, give the explained model's class `classes`?"""
    x = masks.detach().double().cpu()
    y = classes.detach().long().cpu()
    correct = torch.zeros(len(x), dtype=torch.bool)
    with torch.enable_grad():
        for test in cross_fitting_folds(len(x), folds):
            if test.all():
                continue
            w, b = fit_logistic(x[~test], y[~test], num_classes, steps, weight_decay)
            correct[test] = (x[test] @ w + b).argmax(1) == y[test]
    return correct.to(masks.device)
