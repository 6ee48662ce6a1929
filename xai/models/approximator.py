"""VIBI approximator: a small CNN q(y | t) that predicts the black box's output from a masked input.

The masked input is mostly zeros; where the kept chunks sit matters as much as what they show, so
the head flattens the spatial map instead of pooling it away.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from xai.models.explainers import scaled_channels


class Approximator(nn.Module):
    """Three 3x3 conv layers (two of stride 2), then a two-layer MLP to class logits."""

    def __init__(self, in_channels: int, num_classes: int, height: int, width_px: int,
                 width_multiplier: float = 1.0) -> None:
        super().__init__()
        c1, c2, hidden = (scaled_channels(base, width_multiplier) for base in (32, 64, 128))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c2, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        )
        cells = math.ceil(math.ceil(height / 2) / 2) * math.ceil(math.ceil(width_px / 2) / 2)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * cells, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
