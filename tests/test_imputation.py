"""ROAD's noisy linear imputation: kept pixels exact, removed ones the mean of their neighbours."""

from __future__ import annotations

import torch

from xai.data.imputation import NEIGHBOUR_WEIGHTS, linear_impute, noisy_linear_impute


def _neighbour_mean_residual(filled: torch.Tensor, removed: torch.Tensor) -> float:
    """Largest |pixel - weighted mean of its in-image neighbours| over removed pixels (a loop: slow,
    but independent of the convolution the implementation uses)."""
    worst = 0.0
    b, c, h, w = filled.shape
    for n, ch, i, j in removed.nonzero().tolist():
        total = weight = 0.0
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ii, jj = i + di, j + dj
                if (di or dj) and 0 <= ii < h and 0 <= jj < w:
                    wt = NEIGHBOUR_WEIGHTS[di + 1][dj + 1]
                    total += wt * filled[n, ch, ii, jj].item()
                    weight += wt
        worst = max(worst, abs(filled[n, ch, i, j].item() - total / weight))
    return worst


def test_kept_pixels_exact_and_removed_ones_solve_the_neighbour_equations():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 9, 7, generator=g, dtype=torch.float64)
    keep = torch.rand(3, 1, 9, 7, generator=g) > 0.6
    filled = linear_impute(x, keep, tolerance=1e-10)
    assert torch.equal(filled[keep.expand_as(x)], x[keep.expand_as(x)])
    assert _neighbour_mean_residual(filled, ~keep.expand_as(x)) < 1e-6


def test_constant_image_is_filled_with_the_constant():
    x = torch.full((2, 3, 8, 8), 0.7)
    keep = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    keep[:, :, 0, 0] = True  # a single kept pixel determines everything
    keep[1, :, 4:, :] = True
    assert torch.allclose(linear_impute(x, keep), x, atol=1e-3)


def test_everything_removed_stays_finite():
    x = torch.rand(2, 1, 6, 6)
    filled = noisy_linear_impute(x, torch.zeros(2, 1, 6, 6, dtype=torch.bool), 0.01,
                                 torch.Generator().manual_seed(0))
    assert torch.isfinite(filled).all() and filled.abs().max() < 0.1


def test_noise_only_on_removed_pixels_and_reproducible():
    x = torch.rand(4, 1, 8, 8)
    keep = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5
    a = noisy_linear_impute(x, keep, 0.05, torch.Generator().manual_seed(2))
    b = noisy_linear_impute(x, keep, 0.05, torch.Generator().manual_seed(2))
    clean = linear_impute(x, keep)
    assert torch.equal(a, b)
    assert torch.equal(a[keep], x[keep])
    noise = (a - clean)[~keep]
    assert 0.03 < noise.std().item() < 0.07


def _mixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose solves need very different numbers of iterations: a few removed pixels, half
    the image, almost all of it (one kept pixel), and the whole image."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 16, 16, generator=g)
    keep = torch.rand(4, 1, 16, 16, generator=g) > torch.tensor([0.05, 0.5, 1.0, 1.0])[:, None,
                                                                                      None, None]
    keep[2, 0, 8, 8] = True
    return x, keep


def test_the_default_tolerance_is_close_to_a_tight_solve_well_below_roads_noise():
    x, keep = _mixed_batch()
    tight = linear_impute(x.double(), keep, tolerance=1e-12, max_iterations=5000)
    assert _neighbour_mean_residual(tight[:2], ~keep[:2].expand_as(x[:2])) < 1e-8
    assert (linear_impute(x, keep) - tight).abs().max() < 0.01 / 4  # ROAD's noise std is 0.01


def test_each_image_stops_on_its_own_so_its_fill_does_not_depend_on_its_batch():
    x, keep = _mixed_batch()
    together = linear_impute(x, keep)
    alone = torch.cat([linear_impute(x[i:i + 1], keep[i:i + 1]) for i in range(len(x))])
    assert torch.allclose(together, alone, atol=1e-6, rtol=0)
    capped = linear_impute(x, keep, max_iterations=3)  # unconverged images still come back
    assert torch.isfinite(capped).all() and torch.equal(capped[keep.expand_as(x)],
                                                        x[keep.expand_as(x)])
