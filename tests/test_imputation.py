"""ROAD's noisy linear imputation: kept pixels exact, removed ones the mean of their neighbours."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xai.data.imputation import (
    NEIGHBOUR_WEIGHTS,
    SMOOTH_SCALES,
    _gaussian_1d,
    _multiscale_blur,
    linear_impute,
    noisy_linear_impute,
    smooth_fill,
)


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


# ----------------------------------------------------------------------------- smooth_fill


def _ramp(n: int = 2, size: int = 16) -> torch.Tensor:
    """Smooth images (a diagonal ramp, one direction per channel), where interpolation is easy."""
    t = torch.linspace(0, 1, size)
    return torch.stack([(t[:, None] + t[None, :]) / 2, t[:, None].expand(size, size),
                        t[None, :].expand(size, size)])[None].expand(n, -1, -1, -1).clone()


def test_the_multiscale_blur_is_the_sum_of_zero_padded_gaussian_convolutions():
    z = torch.rand(3, 2, 10, 13, dtype=torch.float64)
    expected = torch.zeros_like(z)
    for sigma in SMOOTH_SCALES:  # separable, as 1-channel convolutions (slower, plainly right)
        row, col = _gaussian_1d(sigma, 13, z), _gaussian_1d(sigma, 10, z)
        y = F.conv2d(z.reshape(6, 1, 10, 13), row.view(1, 1, 1, -1), padding=(0, len(row) // 2))
        y = F.conv2d(y, col.view(1, 1, -1, 1), padding=(len(col) // 2, 0))
        expected += y.reshape(3, 2, 10, 13) / sigma ** 2
    torch.testing.assert_close(_multiscale_blur(z), expected)


def test_smooth_fill_keeps_kept_pixels_and_fills_a_constant_with_it():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 10, 12, generator=g)
    keep = (torch.rand(3, 1, 10, 12, generator=g) > 0.8).float()
    filled = smooth_fill(x, keep)
    kept = keep.bool().expand_as(x)
    assert torch.equal(filled[kept], x[kept])
    constant = torch.full((3, 3, 10, 12), 0.4)
    torch.testing.assert_close(smooth_fill(constant, keep), constant)
    assert torch.equal(smooth_fill(x, torch.zeros_like(keep)), torch.zeros_like(x))  # as 0-fill


def test_smooth_fill_is_close_to_roads_imputation_and_far_from_zeros():
    """The control that passes: ROAD's own fill; the one that fails: zeros in the removed pixels."""
    x = _ramp()
    keep = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.9
    smooth, road = smooth_fill(x, keep.float()), linear_impute(x, keep, tolerance=1e-6)
    removed = ~keep.expand_as(x)
    assert (smooth - road)[removed].abs().mean() < 0.05 < (x * keep - road)[removed].abs().mean()


def test_smooth_fill_takes_soft_masks_and_passes_gradients_to_them():
    x = torch.rand(2, 3, 8, 8)
    keep = torch.rand(2, 1, 8, 8, requires_grad=True)
    smooth_fill(x, keep).square().sum().backward()
    assert torch.isfinite(keep.grad).all() and keep.grad.abs().sum() > 0
    per_channel = (torch.rand(2, 3, 8, 8) > 0.5).float()  # each channel its own chunks
    filled = smooth_fill(x, per_channel)
    assert torch.equal(filled[per_channel.bool()], x[per_channel.bool()])
