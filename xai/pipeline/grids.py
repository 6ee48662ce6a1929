"""The explanation grids `train_l2x` and `train_vibi` log to MLflow while they train.

At the start and after every validation, `train`'s `on_validation` draws the explanation grid of
a fixed batch of validation images with `render`'s drawing code (`xai.viz.render.vibi_grid`) and
logs it as one step of the run's stepped image series `GRID_KEY`, so the run page's image view
steps through the explanations as they form. The grids go to MLflow only: they shape no DVC
output (the training is bit-identical without them), so, like the tracking module, this module
is plumbing that the stages' DVC dependencies leave out (`tests/test_project.py`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

from xai.data.prepared import Split
from xai.models.vibi import VibiModel
from xai.pipeline.tracking import Run
from xai.train.vibi import VibiConfig
from xai.viz.figures import png_bytes
from xai.viz.render import explained_panels, vibi_grid

#: MLflow image key; images per row (fewer when fewer are shown: the default 4 make a 2 x 2 grid);
#: resolution (most of a grid's cost is matplotlib's layout, not its pixels: docs/vibi.md).
GRID_KEY, GRID_COLUMNS, GRID_DPI = "explanations", 2, 100


def grid_png(model: VibiModel, shown: Split, shown_probs: torch.Tensor, classes: Sequence[str],
             settings: VibiConfig, blackbox: nn.Module, amp: bool = False) -> bytes:
    """The grid of the images `shown` (true classes in `shown.y`; the black box's probabilities
    `shown_probs`) as `model` explains them now, as PNG bytes: input | p(z|x) | top-k chunks,
    titled with the black box's prediction on the kept chunks, as `render` draws it."""
    approximator = blackbox if settings.objective == "blackbox" else None
    panels = explained_panels(model, shown, shown_probs, blackbox=blackbox,
                              approximator=approximator, amp=amp)
    figure = vibi_grid(panels, classes, settings.k, settings.beta, min(GRID_COLUMNS, len(shown)))
    return png_bytes(figure, GRID_DPI)


class GridLogger:
    """`train`'s `on_validation`: log `grid_png` of the images `shown` to `run` as step `step`
    of the image series `GRID_KEY` (nothing once the store is lost); `seconds` is the time spent
    drawing and logging so far."""

    def __init__(self, run: Run, shown: Split, shown_probs: torch.Tensor,
                 classes: Sequence[str], settings: VibiConfig, blackbox: nn.Module,
                 amp: bool = False) -> None:
        self.run, self.shown, self.shown_probs, self.classes = run, shown, shown_probs, classes
        self.settings, self.blackbox, self.amp = settings, blackbox, amp
        self.seconds = 0.0

    def __call__(self, step: int, model: VibiModel) -> None:
        if self.run.lost is not None:
            return
        start = time.perf_counter()
        png = grid_png(model, self.shown, self.shown_probs, self.classes, self.settings,
                       self.blackbox, self.amp)
        self.run.log_image(png, GRID_KEY, step)
        self.seconds += time.perf_counter() - start
