"""The library API beyond VIBI: `xai.evaluate` over any methods and model, and projection onto the
boundary of any invertible network that follows the `xai.Invertible` protocol."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import xai
from tests.conftest import separable
from xai.tensors import to_unit

SMALL = {"chunk": 4, "k": 1, "budgets": (1, 2), "curve_points": 5, "robustness_images": 8,
         "perturbations": 2, "encoding_folds": 2, "bootstrap": 200, "batch_size": 64}


class HalfBrightness(nn.Module):
    """Two classes from the brightness of the left and right halves (with weights to randomise)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        with torch.no_grad():
            self.linear.weight.copy_(10 * torch.eye(2))
            self.linear.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return self.linear(torch.stack([x[..., :half].mean((1, 2, 3)),
                                        x[..., half:].mean((1, 2, 3))], 1))


class BrightChunks:
    """Not a dataclass, no `model`: the pixels themselves as the map (bright = relevant here)."""

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return inputs.clone()


def test_evaluate_measures_any_methods_on_any_model():
    model = HalfBrightness().eval()
    x = to_unit(separable(32).x)
    methods = {"saliency": xai.GradientSaliency(model), "pixels": BrightChunks(),
               "random": xai.RandomChunks(model, 4, seed=0)}
    report = xai.evaluate(methods, model, x, reference="pixels", **SMALL)
    table = report.table["methods"]
    assert list(table) == ["saliency", "pixels", "random"]
    assert report.table["judge"] == {}  # no judge: no fidelity columns
    for row in table.values():
        assert row["explains"] == "model"
        assert not any(key.startswith("fidelity") for key in row)
        low, mean, high = (row[f"deletion_auc{s}"] for s in ("_ci_low", "", "_ci_high"))
        assert low <= mean <= high
    # the bright chunks carry this model's decision: removing them first beats random order
    assert table["pixels"]["deletion_auc"] < table["random"]["deletion_auc"]
    # sanity checks need a method that can be rebuilt on a randomised model
    assert "randomization_spearman_top" in table["saliency"]
    assert "randomization_spearman_top" not in table["pixels"]
    assert set(report.differences) == {"saliency", "random"}
    text = report.markdown()
    assert "| pixels | model |" in text and "n/a" in text and "fidelity_k" not in text
    again = xai.evaluate(methods | {"random": xai.RandomChunks(model, 4, seed=0)}, model, x,
                         reference="pixels", **SMALL)
    assert again.table == report.table


def test_evaluate_without_robustness_images_skips_robustness_and_sanity():
    model = HalfBrightness().eval()
    x = to_unit(separable(16).x)
    report = xai.evaluate({"saliency": xai.GradientSaliency(model)}, model, x,
                          **(SMALL | {"robustness_images": 0}))
    row = report.table["methods"]["saliency"]
    assert "deletion_auc" in row and "sparseness" in row
    assert not any(key.startswith(("infidelity", "max_sensitivity", "randomization"))
                   for key in row)
    text = report.markdown()
    assert "(robustness and sanity not measured)" in text
    # infidelity, max_sensitivity, both randomisations, their floor and whether sanity passed
    assert text.count("n/a") == 6


def test_evaluate_with_two_models_and_a_judge():
    from xai.models.blackbox import Architecture
    from xai.models.judge import Judge

    blackbox, other = HalfBrightness().eval(), HalfBrightness().eval()
    x = to_unit(separable(16).x)
    judge = Judge(Architecture("small_cnn", 1, 2, 8, 4), chunk=4).eval()
    report = xai.evaluate({"a": (xai.GradientSaliency(blackbox), "blackbox"),
                           "b": (xai.GradientSaliency(other), "other")},
                          {"blackbox": blackbox, "other": other}, x, judge=judge, **SMALL)
    assert report.table["methods"]["b"]["explains"] == "other"
    assert "fidelity_k1" in report.table["methods"]["a"]
    assert math.isfinite(report.table["judge"]["judge_agreement_k2"])
    with pytest.raises(ValueError, match="explains 'nobody'"):
        xai.evaluate({"a": (xai.GradientSaliency(blackbox), "nobody")}, blackbox, x, **SMALL)
    with pytest.raises(ValueError, match="at most the 4 chunks"):
        xai.evaluate({"a": xai.GradientSaliency(blackbox)}, blackbox, x, budgets=(8,), chunk=4)


class Rotation(nn.Module):
    """Another invertible network: T(x) = Q x with Q orthogonal, a linear head on top."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        self.register_buffer("q", q)
        self.head = Head(dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.q.T

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Head(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, classes).double()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)

    def affine(self, feature_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear.weight, self.linear.bias


def test_projection_and_importance_through_the_protocol():
    torch.manual_seed(0)
    model = Rotation(5, 3)
    x = torch.randn(40, 5, dtype=torch.float64)
    p = xai.project(model, x)
    logits = model(x)
    assert torch.equal(p.source, logits.argmax(1))
    # on the boundary: the two classes tie at x_p, and x_p = T^-1(z_p)
    at = model(p.projected)
    assert torch.allclose(at.gather(1, p.source[:, None]), at.gather(1, p.counterfactual[:, None]),
                          atol=1e-9)
    assert torch.allclose(p.projected, model.inverse(p.projected_features), atol=1e-12)
    # the closest boundary point: x - x_p is along the margin's gradient Q^T w, of length
    # margin / ||w|| (Q keeps lengths)
    w = model.head.linear.weight
    direction = (w[p.source] - w[p.counterfactual]) @ model.q
    cosine = torch.nn.functional.cosine_similarity(p.explanation, direction, dim=1)
    assert torch.allclose(cosine, torch.ones(40, dtype=torch.float64))
    assert torch.allclose(p.explanation.norm(dim=1), p.margin / direction.norm(dim=1))
    # a linear model: the signed Taylor terms add up to the margin exactly
    importance = xai.BoundaryImportance(model).attribute(x)
    assert torch.allclose((direction * p.explanation).sum(1), p.margin)
    assert torch.allclose(importance, (direction * p.explanation).abs())
