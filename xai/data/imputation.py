"""ROAD's noisy linear imputation (Rong et al., 2022, "A Consistent and Efficient Evaluation Strategy
for Attribution Methods").

Filling removed pixels with 0 leaks *where* they were removed: the black box can read the mask's
shape and the class it encodes. ROAD instead sets every removed pixel to the weighted mean of its 8
neighbours (direct neighbours weight 1/6, diagonal ones 1/12), kept pixels fixed, which makes the
filled image smooth across the mask's border, then adds a little Gaussian noise to the removed pixels
only. The means form a sparse linear system per image and channel (a graph Laplacian on the removed
pixels, with the kept pixels as boundary values); it is solved here for a whole batch at once by
Jacobi-preconditioned conjugate gradients with a 3x3 neighbour sum as the operator, so no
pixel or image is looped over in Python.

`smooth_fill` is its differentiable stand-in for training (VIBI's `fill: smooth`): each removed
pixel gets a distance-weighted mean of the kept ones (normalized convolution), which takes a soft
mask, so gradients reach the explainer's relaxed selection.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NEIGHBOUR_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12),
                     (1 / 6, 0.0, 1 / 6),
                     (1 / 12, 1 / 6, 1 / 12))


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """Weighted sum (`NEIGHBOUR_WEIGHTS`) of each pixel's in-image neighbours, per channel (zero
    outside the image), as shifted slices: several times faster on a CPU than a depthwise conv."""
    padded = F.pad(x, (1, 1, 1, 1))
    vertical = padded[..., :-2, :] + padded[..., 2:, :]  # up + down, H x (W + 2)
    direct = vertical[..., 1:-1] + padded[..., 1:-1, :-2] + padded[..., 1:-1, 2:]
    diagonal = vertical[..., :-2] + vertical[..., 2:]
    return direct * NEIGHBOUR_WEIGHTS[0][1] + diagonal * NEIGHBOUR_WEIGHTS[0][0]


def linear_impute(x: torch.Tensor, keep: torch.Tensor, tolerance: float = 1e-3,
                  max_iterations: int = 500, check_every: int = 5) -> torch.Tensor:
    """`x` with every pixel outside `keep` set to the weighted mean of its neighbours.

    `x` is (B, C, H, W); `keep` is a bool mask broadcastable to it (e.g. (B, 1, H, W)): True pixels
    are returned unchanged. Solves, for the removed pixels u, `deg * u - W u = W_kept x` by conjugate
    gradients, each image until its own relative residual is below `tolerance` (checked every
    `check_every` iterations; `max_iterations` at most): a converged image leaves the batch, so the
    later, fewer iterations run on the images that still need them. A removed region that touches
    no kept pixel (the whole image removed, say) makes the system singular, but its right-hand side
    is exactly 0 there, so conjugate gradients leave it at 0: finite, never NaN."""
    removed = (~keep.expand_as(x)).to(x.dtype)
    kept_values = x * (1 - removed)
    degree = _neighbour_sum(torch.ones_like(x[:1]))  # (1, C, H, W): weights of in-image neighbours
    rhs = removed * _neighbour_sum(kept_values)
    out = kept_values.clone()
    dims = (1, 2, 3)
    # the state of the images still being solved, and where they sit in the batch
    active = torch.arange(len(x), device=x.device)
    solution = torch.zeros_like(x)
    residual = rhs
    preconditioner = removed / degree
    direction = preconditioner * residual
    rz = (residual * direction).sum(dims, keepdim=True)
    threshold = tolerance ** 2 * rhs.square().sum(dims, keepdim=True).clamp_min(1.0)
    for iteration in range(max_iterations):
        a_direction = removed * (degree * direction - _neighbour_sum(removed * direction))
        step = rz / (direction * a_direction).sum(dims, keepdim=True).clamp_min(1e-30)
        solution = solution + step * direction
        residual = residual - step * a_direction
        last = iteration == max_iterations - 1
        if iteration % check_every == check_every - 1 or last:
            done = (residual.square().sum(dims) <= threshold.flatten()) | last
            if bool(done.any()):
                out[active[done]] += removed[done] * solution[done]
                if bool(done.all()):
                    break
                left = ~done
                active, solution, residual, direction, rz, threshold, removed, preconditioner = (
                    t[left] for t in (active, solution, residual, direction, rz, threshold,
                                      removed, preconditioner))
        z = preconditioner * residual
        rz_next = (residual * z).sum(dims, keepdim=True)
        direction = z + (rz_next / rz.clamp_min(1e-30)) * direction
        rz = rz_next
    return out


def noisy_linear_impute(x: torch.Tensor, keep: torch.Tensor, noise_std: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """ROAD's fill: `linear_impute`, plus N(0, noise_std^2) noise on the removed pixels only (the
    default tolerance leaves errors of about 1e-3, below the noise ROAD adds)."""
    filled = linear_impute(x, keep)
    if noise_std <= 0:
        return filled
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device).to(x.device, x.dtype)
    removed = ~keep.expand_as(x)
    return torch.where(removed, filled + noise_std * noise, filled)


def fill(x: torch.Tensor, keep: torch.Tensor, imputed: torch.Tensor | bool = False,
         noise_std: float = 0.01, generator: torch.Generator | None = None) -> torch.Tensor:
    """`x` with the pixels outside `keep` (N x 1 or C x H x W, 0/1) removed: set to 0, or, where
    `imputed` (per row, or all), filled by noisy linear imputation."""
    keep = keep.to(x.dtype)
    out = x * keep
    rows = torch.as_tensor(imputed, device=x.device).expand(len(x)) if isinstance(imputed, bool) \
        else imputed.to(x.device)
    if rows.any():
        idx = rows.nonzero().squeeze(1)
        out = out.index_copy(0, idx, noisy_linear_impute(x[idx], keep[idx] > 0.5, noise_std,
                                                         generator))
    return out


SMOOTH_SCALES = (1.0, 2.0, 4.0, 8.0)  # Gaussian widths (pixels) of `smooth_fill`'s weights


def _gaussian_1d(sigma: float, size: int, like: torch.Tensor) -> torch.Tensor:
    """A normalised 1-D Gaussian of width `sigma`, cut at 3 sigma or at the image's `size`."""
    radius = min(math.ceil(3 * sigma), size - 1)
    t = torch.arange(-radius, radius + 1, device=like.device, dtype=torch.float32)
    g = torch.exp(-t.square() / (2 * sigma * sigma))
    return (g / g.sum()).to(like.dtype)


def _blur_matrix(sigma: float, size: int, like: torch.Tensor) -> torch.Tensor:
    """The size x size banded matrix of `_gaussian_1d`: M @ v is v convolved with the Gaussian,
    zero outside the image."""
    g = _gaussian_1d(sigma, size, like)
    offset = torch.arange(size, device=like.device)
    tap = offset[None, :] - offset[:, None] + len(g) // 2  # which Gaussian tap links i to j
    inside = (tap >= 0) & (tap < len(g))
    return torch.where(inside, g[tap.clamp(0, len(g) - 1)], torch.zeros((), dtype=like.dtype))


def _multiscale_blur(z: torch.Tensor) -> torch.Tensor:
    """Sum over `SMOOTH_SCALES` of z (N x C x H x W) blurred by a Gaussian of each width,
    weighted 1 / width^2 (its peak height), zero outside the image: nearer pixels weigh more,
    and a pixel far from every kept one still gets the wide scales' weight. Each blur is two
    banded matrix products (rows, then columns): on a 2-core CPU over ten times faster, forward
    and backward, than the same separable blur as 1-channel convolutions on 32 x 32 images."""
    h, w = z.shape[-2:]
    out = torch.zeros_like(z)
    for sigma in SMOOTH_SCALES:
        out = out + _blur_matrix(sigma, h, z) @ z @ _blur_matrix(sigma, w, z).T / sigma ** 2
    return out


def smooth_fill(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`x` (N x C x H x W) kept where `keep` (N x 1 or C x H x W, in [0, 1], soft masks allowed) is
    1, elsewhere the kept pixels' mean weighted by `_multiscale_blur` (normalized convolution):
    `keep * x + (1 - keep) * blur(keep * x) / blur(keep)`. Close to `linear_impute` on natural
    images (both interpolate smoothly from the kept pixels) and differentiable in `keep`; an
    all-removed image becomes 0, as with the zero fill."""
    kept = x * keep
    blurred = _multiscale_blur(torch.cat([kept, keep], 1))
    values, weights = blurred[:, :x.shape[1]], blurred[:, x.shape[1]:]
    # a pixel beyond every kept one's reach has weight 0 and value 0: it stays 0
    return kept + (1 - keep) * values / weights.clamp_min(1e-12)
