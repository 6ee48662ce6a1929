"""Explain a model you define with the public API: a tiny CNN on synthetic images whose class is
the quadrant holding a bright square; VIBI should keep chunks of that square.

    python examples/explain_your_model.py      # about 20 s on 2 CPU cores
"""

from __future__ import annotations

import torch
from torch import nn

import xai


def quadrant_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """16 x 16 noise with a bright 8 x 8 square in one of four quadrants (the class)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.3
    for c in range(4):
        r, col = divmod(c, 2)
        x[y == c, :, 8 * r:8 * r + 8, 8 * col:8 * col + 8] += 0.7
    return x, y


def main() -> float:
    torch.manual_seed(0)
    x, y = quadrant_images(2048, 0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                          nn.Flatten(), nn.Linear(8 * 16, 4))
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(3):  # your model, trained your way
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    vibi = xai.VIBI(model, k=2, explainer="ResNet_4x", width_multiplier=0.25, warmup_steps=0)
    vibi.fit(x, epochs=2, show_progress=False)
    test, _ = quadrant_images(256, 1)
    keep = vibi.top_k(test)
    with torch.no_grad():
        kept = (model(test * keep).argmax(1) == model(test).argmax(1)).float().mean().item()
    maps = vibi.attribute(test[:4])
    print(f"attribution maps {tuple(maps.shape)}; the model keeps its prediction on the 2 kept "
          f"chunks for {kept:.0%} of test images")
    return kept


if __name__ == "__main__":
    main()
