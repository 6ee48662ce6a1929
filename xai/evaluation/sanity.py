"""Sanity checks (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018).

Model-parameter randomisation: re-initialise the explained model's layers from the top (the last
layer with parameters) down and compare each method's map on the randomised model with its map
on the trained one (Spearman rank correlation of the chunk scores, per image). A method whose
maps stay the same does not depend on what the model learned. Two points of the cascade are
measured: the top layer only, and every layer.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def parameter_layers(model: nn.Module) -> list[nn.Module]:
    """The modules that own parameters directly and can re-initialise them, input to output."""
    return [m for m in model.modules() if hasattr(m, "reset_parameters")
            and any(True for _ in m.parameters(recurse=False))]


def randomised(model: nn.Module, top_layers: int | None, seed: int) -> nn.Module:
    """A copy of `model` with its top `top_layers` parameter layers (None: all) re-initialised."""
    copy_ = copy.deepcopy(model)
    layers = parameter_layers(copy_)
    chosen = layers if top_layers is None else layers[len(layers) - top_layers:]
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with torch.no_grad():
            for layer in chosen:
                layer.reset_parameters()
    finally:
        torch.random.set_rng_state(state)
    return copy_.eval()


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks along dim 1 (0-based), tied values sharing their mean rank."""
    x = x.contiguous()
    s = x.sort(1).values
    first = torch.searchsorted(s, x, right=False)
    last = torch.searchsorted(s, x, right=True) - 1
    return (first + last).to(torch.float64) / 2


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each row of `a` with the same row of `b` (0 where a row is
    constant)."""
    ra, rb = ranks(a.flatten(1)), ranks(b.flatten(1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    den = (ra.norm(dim=1) * rb.norm(dim=1))
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))
