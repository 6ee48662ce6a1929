"""xai: train models and explain their decisions (invertible boundaries, VIBI), reproducibly.

The public API (see the README's "Python API"):

- `VIBI(blackbox, k=..., beta=...).fit(x_train).attribute(x)`: VIBI for any model;
- the explanation methods of the evaluation, one call shape each (`xai.explain.attribution`);
- `evaluate(methods, model, x)`: every method measured the same way, a table with intervals;
- `project(model, x)` and `BoundaryImportance(model)`: projections onto the decision boundary of
  any classifier that follows the `Invertible` protocol (`InvertibleClassifier` is one), and
  `cross(model, projection, margin, centres=class_centres(model, x, y, classes))` (or
  `prototypes=Prototypes.of(model, x, y, neighbours)`): counterfactuals a margin past it.

Names are imported on first use, so `import xai.explain.boundary` does not load Captum.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"VIBI": "xai.explain.vibi",
          "evaluate": "xai.evaluation.table", "Report": "xai.evaluation.table",
          **{name: "xai.explain.boundary" for name in (
              "AffineHead", "BoundaryImportance", "Invertible", "Projection", "Prototypes",
              "class_centres", "cross", "importance", "project")},
          "InvertibleClassifier": "xai.models.invertible",
          **{name: "xai.explain.attribution" for name in (
              "GradientSaliency", "GradientShap", "InputTimesGradient",
              "IntegratedGradients", "KernelShap", "Lime",
              "Occlusion", "RandomChunks", "SmoothGrad")}}
__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'xai' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
