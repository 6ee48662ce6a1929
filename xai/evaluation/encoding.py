"""Encoding, by its definition (Puli, Nguyen and Ranganath, NeurIPS 2024).

An explanation `e` *encodes* when the label depends on the event "the explainer selected v" given
the selected values: `p(y | x_v, e(x) = v) != p(y | x_v)`. Then the selection itself carries
information about the class that its pixels do not show, and a predictor trained on explanations
can read the class from *where* the explainer looked (Jethani et al., "Don't be fooled", AISTATS
2023, show how class-dependent explainers leak the label this way).

`encoding_gain` measures that dependence. Every image appears twice: under the method's selection
for it (`E = 1`), and under the method's selection for another image (`E = 0`; `paired_images`
pairs them). The two kinds of selection then lie in the same places, with the same sizes, but
only for `E = 1` was `v` chosen for the image it shows, so `p(y | x_v, v, E = 0) = p(y | x_v)`
and the definition becomes: does `E` help predict the class given `x_v` and `v`? Each selection
is described by what its values say about the class (the neutral judge's log-probabilities on the
kept pixels; the judge was trained on random subsets only) and by where it lies (the chunk mask).
Two multinomial logistic predictors of the explained model's class are fitted on as many
selections each: one knowing `E = 1` (the method's own selections only), one not knowing `E`
(the pooled selections, alternately the image's own and its partner's). The encoding of an image
is how much better the first predicts its class under the method's own selection, in nats,
cross-fitted (each image scored by predictors fitted on the other folds). Where `E` tells nothing,
the two fits see data of one distribution and the gain is 0 up to noise (exactly 0 for a fixed
selection, whose two kinds coincide); an explainer that writes the class into the position of its
chunks gives a large gain.

This replaces a check that predicted the class from the mask alone: a faithful explainer scores
high on that wherever the class moves the evidence (a 1 and a 0 cover different chunks), which is
allowed and is not encoding.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from xai.evaluation.probes import cross_fitting_folds, fit_logistic

#: Class log-probabilities below this are clipped: past it they only tell how sure a model is that
#: a class is wrong, and their scale would slow the fits.
LOG_PROB_FLOOR = -20.0


def paired_images(n: int, seed: int) -> torch.Tensor:
    """A seeded derangement of `n` >= 2 images (one random cycle): image i's partner, never i."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    partner = torch.empty(n, dtype=torch.long)
    partner[order] = order.roll(-1)
    return partner


def _log_likelihood(x: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, b: torch.Tensor
                    ) -> torch.Tensor:
    return F.log_softmax(x @ w + b, 1).gather(1, rows)


def encoding_gain(values: torch.Tensor, masks: torch.Tensor, other_values: torch.Tensor,
                  other_masks: torch.Tensor, classes: torch.Tensor, num_classes: int,
                  folds: int = 5, steps: int = 100, weight_decay: float = 1e-2) -> torch.Tensor:
    """Per image, nats: how much knowing that the method selected its chunks for this image
    improves the prediction of the explained model's class beyond what they show (the module).

    `masks` N x d (0/1): the method's selection for each image; `other_masks`: a selection not
    chosen for it (another image's: `masks[paired_images(n, seed)]`), of the same kind; `values`
    / `other_values`: N x K class log-probabilities given the image's pixels under each (the
    neutral judge's); `classes`: N, the explained model's predictions. Cross-fitted over images:
    an image's two selections are scored by predictors fitted on the other folds.
    """
    def features(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        values = v.detach().double().cpu().clamp_min(LOG_PROB_FLOOR)
        return torch.cat([values, m.detach().double().cpu()], 1)

    method, other = features(values, masks), features(other_values, other_masks)
    y = classes.detach().long().cpu()
    n = len(y)
    gain = torch.zeros(n, dtype=torch.float64)
    with torch.enable_grad():
        for test in cross_fitting_folds(n, folds):
            if test.all():
                continue
            train = (~test).nonzero().squeeze(1)
            # as many selections for each fit: the method's own for `knowing`, half its own and
            # half another image's (alternate images) for `without`, so a difference is E's
            mixed = torch.where((torch.arange(len(train)) % 2 == 0)[:, None], method[train],
                                other[train])
            without = fit_logistic(mixed, y[train], num_classes, steps, weight_decay)
            knowing = fit_logistic(method[train], y[train], num_classes, steps, weight_decay)
            rows = y[test][:, None]
            gain[test] = (_log_likelihood(method[test], rows, *knowing)
                          - _log_likelihood(method[test], rows, *without)).squeeze(1)
    return gain.float().to(classes.device)
