"""The batched perturbation methods: on a model that reads one chunk, all credit goes to it."""

from __future__ import annotations

import torch
from torch import nn

from xai.chunks import chunk_areas
from xai.chunks import chunk_scores as pixel_sums
import pytest

from xai.explain.attribution import KernelShap, Lime, Occlusion, occlusion_windows


class OneChunkModel(nn.Module):
    """Two-class logits (10 * mean of one 2 x 2 chunk, 0): only that chunk matters."""

    def __init__(self, row: int, col: int) -> None:
        super().__init__()
        self.row, self.col = row, col

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, c = 2 * self.row, 2 * self.col
        s = 10 * x[:, :, r:r + 2, c:c + 2].mean((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def chunk_scores(maps: torch.Tensor) -> torch.Tensor:
    """N x C x 6 x 6 maps -> N x 9 sums over the 2 x 2 chunks."""
    return nn.functional.avg_pool2d(maps.sum(1, keepdim=True), 2).flatten(1) * 4


def test_perturbation_methods_credit_the_one_chunk_the_model_reads():
    torch.manual_seed(0)
    x = torch.rand(7, 1, 6, 6) + 0.1
    model = OneChunkModel(1, 2)  # chunk index 1 * 3 + 2 = 5
    target = torch.zeros(7, dtype=torch.long)
    p_full = model(x).softmax(1)[:, 0]
    gain = p_full - 0.5  # the chunk removed: logits (0, 0)
    # LIME's ridge shrinks its coefficients slightly; KernelSHAP's fit is exact here
    for method, tol in ((Lime(model, 2, samples=64, seed=0), 5e-3),
                        (KernelShap(model, 2, samples=64, seed=0), 1e-3)):
        scores = chunk_scores(method.attribute(x, target))
        assert torch.allclose(scores[:, 5], gain, atol=tol), method.name
        others = torch.cat([scores[:, :5], scores[:, 6:]], 1)
        assert others.abs().max() < 1e-3, method.name
    drop = chunk_scores(Occlusion(model, 2, batch_size=16).attribute(x, target))
    assert torch.allclose(drop[:, 5], model(x)[:, 0], atol=1e-5)
    assert drop[:, [0, 1, 2, 3, 4, 6, 7, 8]].abs().max() < 1e-6


def test_kernel_shap_values_add_up_and_reruns_differ_but_seeds_reproduce():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    x = torch.rand(5, 1, 6, 6)
    target = torch.tensor([0, 1, 2, 0, 1])
    shap = KernelShap(net, 2, samples=40, seed=3)
    a = chunk_scores(shap.attribute(x, target))
    with torch.no_grad():
        p = net(x).softmax(1).gather(1, target[:, None])[:, 0]
        p0 = net(torch.zeros_like(x)).softmax(1).gather(1, target[:, None])[:, 0]
    assert torch.allclose(a.sum(1), p - p0, atol=1e-3)  # efficiency
    assert not torch.equal(chunk_scores(shap.attribute(x, target)), a)
    again = KernelShap(net, 2, samples=40, seed=3)
    assert torch.equal(chunk_scores(again.attribute(x, target)), a)
    assert chunk_areas((1, 6, 6), 2).shape[1] == 9


def test_surrogates_stay_defined_with_fewer_subsets_than_chunks():
    """Pixel chunks (CIFAR-10 with `Unet`: 1024 of them) and 100 subsets once made KernelSHAP's
    system singular."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 4))
    x = torch.rand(6, 3, 12, 12)
    target = torch.arange(6) % 4
    for method in (Lime(net, 1, samples=20, seed=0),
                   KernelShap(net, 1, samples=20, seed=0)):
        maps = method.attribute(x, target)  # 144 chunks, 20 subsets
        assert maps.shape == x.shape and torch.isfinite(maps).all(), method.name


def test_sliding_occlusion_scores_each_chunk_by_the_mean_drop_of_the_windows_over_it():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(4 * 9 * 9, 3))
    x, target = torch.rand(3, 2, 9, 9), torch.tensor([0, 2, 1])
    chunk, window, stride = 2, 3, 2  # a 5 x 5 grid (edge chunks partial), windows at 0, 2
    windows = occlusion_windows(5, 5, window, stride)
    assert windows.shape == (4, 25) and (windows.sum(0) >= 1).all()  # every chunk covered
    maps = Occlusion(model, chunk, 7, window, stride).attribute(x, target)
    with torch.no_grad():  # one occluded copy per window, by hand
        full = model(x).gather(1, target[:, None]).squeeze(1)
        drops = torch.stack([full - model(x * (1 - _pixels(w, chunk))).gather(
            1, target[:, None]).squeeze(1) for w in windows], 1)
    expected = drops @ windows / windows.sum(0)
    assert torch.allclose(pixel_sums(maps, chunk), expected.abs(), atol=1e-5)
    corners = maps[:, 0, ::chunk, ::chunk].flatten(1)  # one pixel of each chunk: the sign
    assert torch.equal(corners.sign(), expected.sign())


def test_occlusion_one_chunk_at_a_time_is_the_default_and_a_stride_past_the_window_is_refused():
    assert torch.equal(occlusion_windows(3, 4, 1, 1), torch.eye(12))
    with pytest.raises(ValueError, match="stride 3 is out of range; allowed: 1 to the window"):
        Occlusion(nn.Identity(), 2, window=2, stride=3)


def _pixels(window: torch.Tensor, chunk: int) -> torch.Tensor:
    """A 25-chunk membership row -> 1 x 1 x 9 x 9 pixel mask (edge chunks cropped)."""
    return window.view(5, 5).repeat_interleave(chunk, 0).repeat_interleave(chunk, 1)[:9, :9][None, None]

