"""How well a trained invertible classifier keeps its promises, and what the render stage draws.

`check` measures test accuracy, the reconstruction error `max|x - T^-1(T(x))|` and the residual of
every test point's projection onto its decision boundary; `toy_projections` and
`image_projections` package the projections (and, for the toy set, the boundary curves) as the
stage's output file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xai.data.prepared import Dataset, Split
from xai.explain import boundary
from xai.models.invertible import InvertibleClassifier, reconstruction_error
from xai.tensors import to_unit

PROJECTIONS_KIND = "xai.invertible_projections"


@dataclass(frozen=True)
class Check:
    """Test-set figures of a trained invertible classifier and its boundary projections."""

    accuracy: float
    max_reconstruction_error: float
    max_projection_residual: float
    projection: boundary.Projection
    residual: torch.Tensor


def check(model: InvertibleClassifier, split: Split, batch_size: int = 1024) -> Check:
    """Test accuracy, `max|x - T^-1(T(x))|`, and every point projected onto the boundary with its
    runner-up class, with `|f_c(x_p) - f_k(x_p)|` from a real forward pass (all float32)."""
    model.eval()
    x = to_unit(split.x)
    projection = boundary.project(model, x, batch_size=batch_size)
    residual = boundary.projection_residual(model, projection, batch_size)
    correct = float((projection.source == split.y).float().mean())
    return Check(correct, reconstruction_error(model, x, batch_size), float(residual.max()),
                 projection, residual)


def toy_projections(model: InvertibleClassifier, ds: Dataset, result: Check,
                    curve_points: int = 512) -> dict[str, object]:
    """What the render stage needs for the reference's 4-panel toy figure, on the CPU.

    Train and test points with their features, every test point's projection onto its boundary,
    explanation importance, and the boundary curves of every class pair over the plot window (the
    data's bounding box widened by 20 %).
    """
    p = result.projection
    points = torch.cat([ds.train.x, ds.test.x])
    low, high = points.min(dim=0).values, points.max(dim=0).values
    low, high = low - 0.2 * (high - low), high + 0.2 * (high - low)
    grid = torch.stack(torch.meshgrid(*(torch.linspace(float(a), float(b), 64, device=low.device)
                                        for a, b in zip(low, high)), indexing="ij"), dim=-1)
    with torch.inference_mode():
        cover = model.features(grid.reshape(-1, 2))
        train_features = model.features(ds.train.x)
    curves = boundary.boundary_curves(model, cover, curve_points)
    out = {
        "kind": PROJECTIONS_KIND, "dataset": ds.name, "classes": list(ds.classes),
        "window": torch.stack([low, high]),
        "train_x": ds.train.x, "train_y": ds.train.y, "train_features": train_features,
        "test_x": p.inputs, "test_y": ds.test.y, "test_features": p.features,
        "projected": p.projected, "projected_features": p.projected_features,
        "source": p.source, "counterfactual": p.counterfactual, "margin": p.margin,
        "residual": result.residual, "importance": boundary.importance(model, p),
        "curves": [{"classes": list(c.classes), "inputs": c.inputs, "features": c.features}
                   for c in curves],
    }
    return _to_cpu(out)


def image_projections(ds: Dataset, result: Check) -> dict[str, object]:
    """Every test image's projection onto the boundary with its runner-up class (the inputs
    themselves are in the prepared data set, in the same order)."""
    p = result.projection
    return _to_cpu({
        "kind": PROJECTIONS_KIND, "dataset": ds.name, "classes": list(ds.classes),
        "test_y": ds.test.y, "projected": p.projected, "source": p.source,
        "counterfactual": p.counterfactual, "margin": p.margin, "residual": result.residual,
    })


def _to_cpu(obj: object) -> object:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().contiguous()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
