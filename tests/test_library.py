"""The library API beyond VIBI: `xai.evaluate` over any methods and model, and projection onto the
boundary of any invertible network that follows the `xai.Invertible` protocol."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import xai
from tests.conftest import separable
from xai.chunks import expand
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


def test_a_stochastic_methods_numbers_depend_on_the_seed_alone():
    """SmoothGrad's and GradientShap's noise comes from the global generators: each method's
    measures are the same whatever methods ran before it and however many images their
    robustness checks drew, and leave the generators as they found them."""
    model = HalfBrightness().eval()
    x = to_unit(separable(32).x)

    def stochastic():
        return {"smoothgrad": xai.SmoothGrad(model, samples=4, std=0.3),
                "gradient_shap": xai.GradientShap(model, baselines=x[:8], samples=4)}

    alone = xai.evaluate(stochastic(), model, x, **SMALL).table["methods"]
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    after_others = xai.evaluate({"saliency": xai.GradientSaliency(model),
                                 "random": xai.RandomChunks(model, 4, seed=0), **stochastic()},
                                model, x, **(SMALL | {"robustness_images": 5})).table["methods"]
    assert torch.equal(torch.random.get_rng_state(), state)
    robustness = ("infidelity", "max_sensitivity", "randomization")
    for name in stochastic():
        kept = {k: v for k, v in alone[name].items() if not k.startswith(robustness)}
        assert kept == {k: v for k, v in after_others[name].items()
                        if not k.startswith(robustness)}


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


class CornerJudge(nn.Module):
    """A judge that reproduces the black box (class 0) exactly when the top-left chunk is kept:
    random chunks' expected fidelity at budget b is b / d, known in closed form."""

    chunk = 2

    def forward(self, filled: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        corner = keep[:, 0, 0, 0]
        return torch.stack([corner, 1 - corner], 1)

    def chunk_keep(self, chunk_mask: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return expand(chunk_mask, shape, self.chunk)


class FromCorner:
    """Scores falling with the distance from the top-left pixel (`reverse`: rising with it)."""

    def __init__(self, reverse: bool = False) -> None:
        self.sign = -1.0 if reverse else 1.0

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h, w = inputs.shape[-2:]
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        score = self.sign * -(rows + cols).float()
        return (score - score.min() + 1).expand_as(inputs).clone()


def test_gain_over_random_is_centred_for_random_and_signed_for_the_controls():
    # A control built to pass (the corner first), one built to fail (the corner last) and random
    # chunks themselves, against a judge that only needs the corner: 16 chunks of 2 x 2 pixels.
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))  # the black box always says class 0
    x = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    methods = {"corner_first": FromCorner(), "corner_last": FromCorner(reverse=True),
               "random": xai.RandomChunks(model, 2, seed=0)}
    settings = SMALL | {"chunk": 2, "budgets": (1, 4), "robustness_images": 0,
                        "road_budgets": True}
    report = xai.evaluate(methods, model, x, judge=CornerJudge(), random_draws=64, **settings)
    rows = report.table["methods"]
    for b in (1, 4):
        for fill in ("", "_road"):
            gain = f"fidelity{fill}_over_random_k{b}"
            # random chunks' expectation is b / 16: the corner-first map gains all the rest
            expected = rows["corner_first"][f"fidelity{fill}_k{b}"] - rows["corner_first"][gain]
            assert expected == pytest.approx(b / 16, abs=0.02)
            assert rows["corner_first"][f"{gain}_ci_low"] > 0
            assert rows["corner_last"][f"{gain}_ci_high"] < 0
            # random chunks' own draw is centred on its expectation (within ~4 standard errors)
            low, high = rows["random"][f"{gain}_ci_low"], rows["random"][f"{gain}_ci_high"]
            assert abs(rows["random"][gain]) < high - low
    # the corner-first map always keeps the corner: only the expectation's own error is left
    gain = rows["corner_first"]["fidelity_over_random_k4"]
    width = rows["corner_first"]["fidelity_over_random_k4_ci_high"] - \
        rows["corner_first"]["fidelity_over_random_k4_ci_low"]
    assert gain == pytest.approx(0.75, abs=0.02) and width < 0.02
    text = report.markdown()
    assert "### Gain over random chunks" in text and "(64 draws)" in text
    assert "| corner_first | +0.9" in text  # k = 1 first: 1 - 1/16
    plain = xai.evaluate(methods | {"random": xai.RandomChunks(model, 2, seed=0)}, model, x,
                         judge=CornerJudge(), **settings)
    assert not any("over_random" in key for row in plain.table["methods"].values()
                   for key in row)
    assert "Gain over random" not in plain.markdown()
    # the other measures are the same with and without the draws
    assert {k: v for k, v in rows["random"].items() if "over_random" not in k} == \
        plain.table["methods"]["random"]


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
