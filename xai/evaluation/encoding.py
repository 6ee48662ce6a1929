"""The encoding check (Jethani et al., AISTATS 2021): does the *selection* give the class away?

An amortised explainer trained with its own approximator can pass the prediction through which
chunks it picks rather than what they show. The check trains a small classifier on the selection
masks alone (N x d, 0/1, no pixel values) to predict the explained model's class, cross-fitted:
each image is scored by a classifier trained on the other folds, so every score is out of sample.
Random masks give the floor (the majority-class rate); a method far above it tells the class by
position. A faithful explainer sits above the floor too where the class changes where the
evidence lies (a 1 and a 0 cover different chunks), so compare methods with each other and with
the judge's fidelity, not with 0.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, steps: int, weight_decay: float
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


def encoding_correct(masks: torch.Tensor, classes: torch.Tensor, num_classes: int, folds: int = 5,
                     steps: int = 100, weight_decay: float = 1e-3) -> torch.Tensor:
    """Per image (bool): does a classifier of masks, fitted on the other folds, give its class?

    `masks` N x d (bool or 0/1), `classes` N (the explained model's predictions)."""
    x = masks.detach().double().cpu()
    y = classes.detach().long().cpu()
    n = len(x)
    fold = torch.arange(n) % folds
    correct = torch.zeros(n, dtype=torch.bool)
    with torch.enable_grad():
        for f in range(folds):
            test = fold == f
            if not test.any() or test.all():
                continue
            w, b = _fit_logistic(x[~test], y[~test], num_classes, steps, weight_decay)
            correct[test] = (x[test] @ w + b).argmax(1) == y[test]
    return correct.to(masks.device)
