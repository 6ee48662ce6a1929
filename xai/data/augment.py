"""Batched data augmentation on the device: random crops (zero or reflect padding) and horizontal flips.

One random draw per image from a seeded CPU generator, applied to the whole batch by indexing, so
augmentation is reproducible and never falls back to per-image Python or PIL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator,
                fill: str = "zeros") -> torch.Tensor:
    """Shift each image by up to `padding` pixels in each direction, same size out; the pixels
    shifted in are zeros or (`fill="reflect"`) the image mirrored at its edge."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    padded = F.pad(x, (padding, padding, padding, padding),
                   mode="reflect" if fill == "reflect" else "constant")
    rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the images left-right."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def dequantize(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """uint8 pixels plus uniform noise in [0, 1), scaled to [0, 1): a density's continuous data."""
    return (x.float() + noise) / 256.0
