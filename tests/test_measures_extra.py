"""Bootstrap intervals, Spearman ranks, parameter randomisation, and the encoding check."""

from __future__ import annotations

import torch
from torch import nn

from xai.evaluation.probes import class_from_mask_correct
from xai.evaluation.sanity import parameter_layers, randomised, ranks, spearman
from xai.evaluation.uncertainty import bootstrap, paired_difference, resample_indices


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    g = torch.Generator().manual_seed(0)
    small = (torch.rand(100, generator=g) < 0.5).float()
    large = (torch.rand(2000, generator=g) < 0.5).float()
    a = bootstrap(small, resample_indices(100, 1000, 0))
    b = bootstrap(large, resample_indices(2000, 1000, 0))
    assert a.low < a.mean < a.high and b.low < b.mean < b.high
    assert (b.high - b.low) < (a.high - a.low) / 3
    # about 2 * 1.96 * sqrt(p (1 - p) / n) = 0.196 for n = 100
    assert 0.14 < a.high - a.low < 0.25


def test_paired_difference_sees_what_unpaired_means_hide():
    g = torch.Generator().manual_seed(1)
    base = torch.rand(300, generator=g)
    better = base + 0.01  # a small, consistent gain on every image
    ci = paired_difference(better, base, resample_indices(300, 500, 0))
    assert ci.low > 0 and abs(ci.mean - 0.01) < 1e-6  # float32


def test_spearman_with_ties_and_constant_rows():
    assert torch.equal(ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]])),
                       torch.tensor([[2.5, 0.0, 2.5, 1.0]], dtype=torch.float64))
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0]])
    r = spearman(a, b)
    assert torch.allclose(r, torch.tensor([1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(spearman(a[:1], -b[:1]), torch.tensor([-1.0], dtype=torch.float64))


def test_randomisation_from_the_top_leaves_the_rest_and_the_original():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    top = randomised(model, 1, seed=3)
    every = randomised(model, None, seed=3)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert len(parameter_layers(model)) == 3
    assert not torch.equal(top[4].weight, model[4].weight)
    assert torch.equal(top[0].weight, model[0].weight) and torch.equal(top[2].weight, model[2].weight)
    assert not torch.equal(every[0].weight, model[0].weight)
    assert torch.equal(randomised(model, 1, seed=3)[4].weight, top[4].weight)  # seeded


def test_encoding_check_scores_out_of_sample():
    g = torch.Generator().manual_seed(0)
    classes = torch.arange(400) % 4
    telling = torch.zeros(400, 10, dtype=torch.bool)
    telling[torch.arange(400), classes] = True
    noise = torch.rand(400, 10, generator=g) < 0.3
    assert class_from_mask_correct(telling, classes, 4).all()
    # masks independent of the class: about chance (0.25), never the training fit
    assert class_from_mask_correct(noise, classes, 4).float().mean() < 0.4
