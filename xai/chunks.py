"""Chunk geometry: an image is scored, masked and explained in chunks (s x s patches, shared by
the channels or one per channel); these functions turn chunk values into pixel maps and back,
pick top-k chunks and draw random chunk subsets, batched over images."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def chunk_scores(attribution: torch.Tensor, chunk: int, per_channel: bool = False
                 ) -> torch.Tensor:
    """Sum of |attribution| over each chunk: N x C x H x W -> N x d (d = [C x] rows x cols).

    Where `chunk` does not divide H or W the last row or column of chunks is partial, as the
    explainers make it (`chunk_grid`)."""
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


def random_budgets(n: int, chunks: int, generator: torch.Generator, low: int = 0,
                   scale: str = "linear") -> torch.Tensor:
    """`n` subset sizes in `low`..`chunks`: uniform (`linear`), or uniform in their logarithm
    (`log`, from max(`low`, 1)), which gives every doubling of the budget the same weight."""
    if scale == "linear":
        return torch.randint(low, chunks + 1, (n,), generator=generator, device=generator.device)
    if scale != "log":
        raise ValueError(f"scale = {scale!r} is not allowed; use linear or log")
    lo = max(low, 1)
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    sizes = (math.log(lo) + u * (math.log(chunks + 1) - math.log(lo))).exp().floor()
    return sizes.long().clamp_(lo, chunks)


def random_chunk_masks(n: int, chunks: int, generator: torch.Generator,
                       budget: int | torch.Tensor | None = None,
                       device: torch.device | str = "cpu", low: int = 0,
                       scale: str = "linear") -> torch.Tensor:
    """N x `chunks` boolean masks: `budget` chunks kept per row (a number, one per row, or None:
    drawn by `random_budgets` over `low`..chunks on `scale`), the kept subset uniform among
    those of that size."""
    noise = torch.rand(n, chunks, generator=generator, device=generator.device)
    if budget is None:
        budget = random_budgets(n, chunks, generator, low, scale)
    budget = torch.as_tensor(budget, device=noise.device).reshape(-1, 1)
    rank = noise.argsort(1).argsort(1)  # a uniformly random permutation of 0..chunks-1 per row
    return (rank < budget).to(device)


def num_chunks(shape: tuple[int, ...], chunk: int) -> int:
    """Chunks (shared by the channels) of C x H x W images."""
    _, rows, cols = chunk_grid(shape, chunk)
    return rows * cols


def spread(values: torch.Tensor, shape: tuple[int, ...], chunk: int) -> torch.Tensor:
    """N x d chunk values -> N x C x H x W map whose sum over each chunk is the chunk's value."""
    area = chunk_areas(shape, chunk).to(values.device)
    return expand(values / area, shape, chunk).contiguous()
