"""Controls for the evaluation: selections whose answer is known by construction.

A measure is only trusted once it fails what it must fail and passes what it must pass. Beside
the random chunks of `xai.explain.attribution.RandomChunks` (non-encoding: chosen independently
of the image), these two controls explain in the evaluation's call shape:

- `FixedChunks`: the same chunks for every image, the centre of the image first (non-encoding:
  the selection does not depend on the image, so it cannot tell anything about its class);
- `ClassInPosition`: the chunk whose index is the explained model's class first, then random
  chunks (encoding: the selection's position is the class, whatever its pixels show).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from xai.chunks import chunk_grid, spread
from xai.explain.attribution import Target, explained_classes


@dataclass
class FixedChunks:
    """One ranking of the chunks for every image: nearest the image's centre first (ties by
    index), so its top-k selection is the same central chunks for all images.

    >>> import torch
    >>> control = FixedChunks(torch.nn.Identity(), chunk=2)
    >>> maps = control.attribute(torch.rand(3, 1, 6, 6))
    >>> bool((maps == maps[:1]).all()), float(maps[0, 0, 2, 2]) > float(maps[0, 0, 0, 0])
    (True, True)
    """

    model: nn.Module
    chunk: int
    name: str = "control_fixed"

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        shape = tuple(inputs.shape[1:])
        _, rows, cols = chunk_grid(shape, self.chunk)
        r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        distance = (r - (rows - 1) / 2).square() + (c - (cols - 1) / 2).square()
        order = torch.sort(distance.flatten(), stable=True).indices
        scores = torch.empty(rows * cols)
        scores[order] = torch.arange(rows * cols, 0, -1, dtype=torch.float32)
        return spread(scores.expand(len(inputs), -1).to(inputs.device), shape, self.chunk)


@dataclass
class ClassInPosition:
    """The chunk numbered like the explained model's class ranks first, the others follow in a
    random order: the class is written into where the selection lies (an encoding cheat).

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(4, 1, 4, 4)
    >>> maps = ClassInPosition(model, chunk=2, seed=0).attribute(x)
    >>> top = maps.flatten(1).argmax(1)  # the first pixel of the top chunk
    >>> chunk_of = {0: 0, 2: 1, 8: 2, 10: 3}  # 2 x 2 chunks of a 4 x 4 image
    >>> [chunk_of[int(i)] for i in top] == model(x).argmax(1).tolist()
    True
    """

    model: nn.Module
    chunk: int
    seed: int = 0
    name: str = "control_class_position"
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        target = explained_classes(self.model, inputs, target)
        shape = tuple(inputs.shape[1:])
        _, rows, cols = chunk_grid(shape, self.chunk)
        d = rows * cols
        scores = torch.rand(len(inputs), d, generator=self.generator).to(inputs.device)
        scores[torch.arange(len(inputs), device=inputs.device), target % d] = 2.0
        return spread(scores, shape, self.chunk)
