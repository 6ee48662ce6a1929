"""Decision boundaries: projections land on them, curves follow them, importance adds up."""

from __future__ import annotations

import pytest
import torch

from tests.test_invertible import randomise, tiny_image_model
from xai.explain import boundary
from xai.models.invertible import toy_classifier


def toy_model(classes: int = 2, seed: int = 0) -> torch.nn.Module:
    """A nonlinear 2-D classifier in float64, so checks can be tight."""
    return randomise(toy_classifier(2, classes, blocks=4, hidden=8), seed).double().eval()


def linear_toy(weight: list[list[float]], bias: list[float]) -> torch.nn.Module:
    """T = identity (every subnet outputs ReLU(0) = 0), head given: f(x) = W x + b."""
    model = toy_classifier(2, len(weight), blocks=2, hidden=4).double().eval()
    with torch.no_grad():
        for p in model.net.parameters():
            p.zero_()
        model.head.linear.weight.copy_(torch.tensor(weight))
        model.head.linear.bias.copy_(torch.tensor(bias))
    return model


def blobs(n: int = 300) -> torch.Tensor:
    torch.manual_seed(1)
    centers = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]], dtype=torch.float64)
    return centers.repeat(n // 3, 1) + 0.4 * torch.randn(n, 2, dtype=torch.float64)


def logit_gap(model, x, c, k):
    with torch.no_grad():
        logits = model(x)
    return logits.gather(1, c[:, None])[:, 0] - logits.gather(1, k[:, None])[:, 0]


def test_projected_points_have_equal_logits_after_a_real_forward_pass():
    model = toy_model()
    x = torch.randn(400, 2, dtype=torch.float64) * 2
    p = boundary.project(model, x, batch_size=64)
    assert p.margin.abs().min() > 0 and (p.projected - x).abs().max() > 0.1
    assert p.margin.min() >= 0  # the predicted class is the source
    assert logit_gap(model, p.projected, p.source, p.counterfactual).abs().max() < 1e-10
    assert boundary.projection_residual(model, p).max() < 1e-10
    assert torch.allclose(p.explanation, x - p.projected)


def test_projection_is_orthogonal_in_feature_space():
    model = toy_model()
    p = boundary.project(model, torch.randn(50, 2, dtype=torch.float64))
    w, _ = boundary.hyperplane(model, p.source, p.counterfactual, (2,))
    step = p.features - p.projected_features
    cosine = torch.nn.functional.cosine_similarity(step, w, dim=1).abs()
    assert torch.allclose(cosine, torch.ones_like(cosine))


def test_a_point_on_the_boundary_projects_onto_itself():
    model = toy_model()
    first = boundary.project(model, torch.randn(100, 2, dtype=torch.float64))
    again = boundary.project(model, first.projected, source=first.source,
                             counterfactual=first.counterfactual)
    assert again.margin.abs().max() < 1e-10
    assert (again.projected - first.projected).abs().max() < 1e-10


def test_image_projection_with_gaussian_head_lands_on_the_boundary():
    model = tiny_image_model().double().eval()
    x = torch.rand(30, 1, 8, 8, dtype=torch.float64)
    p = boundary.project(model, x, batch_size=8)
    assert p.projected.shape == x.shape and (p.projected - x).abs().max() > 1e-3
    assert boundary.projection_residual(model, p).max() < 1e-9
    float32 = boundary.project(model.float(), x.float())
    # float32 rounding relative to the logits' size (the Gaussian head's are large)
    with torch.no_grad():
        scale = 1 + model.float()(float32.projected).abs().amax(dim=1)
    assert (boundary.projection_residual(model, float32) / scale).max() < 1e-5


@pytest.mark.parametrize("weight, axis", [([[1.0, 0.0], [-1.0, 0.0]], 0),   # vertical: x0 = 0.25
                                          ([[0.0, 2.0], [0.0, -2.0]], 1)])  # horizontal: x1 = 0.25
def test_vertical_and_horizontal_boundaries(weight, axis):
    bias = [-0.25 * weight[0][axis], 0.25 * weight[0][axis]]
    model = linear_toy(weight, bias)
    x = torch.tensor([[2.0, 3.0], [-1.0, -2.0]], dtype=torch.float64)
    p = boundary.project(model, x)
    assert torch.allclose(p.projected[:, axis], torch.full((2,), 0.25, dtype=torch.float64))
    assert torch.equal(p.projected[:, 1 - axis], x[:, 1 - axis])

    cover = torch.tensor([[-3.0, -4.0], [3.0, 4.0]], dtype=torch.float64)
    (curve,) = boundary.boundary_curves(model, cover, n=101)
    assert curve.classes == (0, 1) and torch.isfinite(curve.inputs).all()
    assert torch.allclose(curve.inputs[:, axis], torch.full((101,), 0.25, dtype=torch.float64))
    along = curve.inputs[:, 1 - axis]
    assert along.min() <= cover[0, 1 - axis] and along.max() >= cover[1, 1 - axis]
    assert (along.diff().abs() > 0).all()  # evenly spread, no repeated points


def test_three_class_boundaries_keep_only_the_top_two_parts():
    model = toy_model(classes=3, seed=3)
    x = blobs()
    with torch.no_grad():
        cover = model.features(x)
    curves = boundary.boundary_curves(model, cover, n=400)
    assert [c.classes for c in curves] == [(0, 1), (0, 2), (1, 2)]
    dropped = 0
    for curve in curves:
        kept = torch.isfinite(curve.inputs).all(dim=1)
        assert torch.equal(kept, torch.isfinite(curve.features).all(dim=1))
        dropped += int((~kept).sum())
        with torch.no_grad():
            logits = model(curve.inputs[kept])
        c, k = curve.classes
        assert torch.allclose(logits[:, c], logits[:, k], atol=1e-9)
        top_two = logits.topk(2, dim=1).indices.sort(dim=1).values
        assert (top_two == torch.tensor([c, k])).all()
    assert dropped > 0  # with three classes, some of each line is not a boundary


def test_three_classes_runner_up_and_counterfactual_target():
    model = toy_model(classes=3, seed=3)
    x = blobs()
    with torch.no_grad():
        logits = model(x)
    p = boundary.project(model, x)
    assert torch.equal(p.source, logits.argmax(dim=1))
    assert torch.equal(p.counterfactual, logits.topk(2, dim=1).indices[:, 1])

    target = torch.where(p.source == 2, 0, 2)
    q = boundary.project(model, x, counterfactual=target)
    assert torch.equal(q.counterfactual, target)
    assert logit_gap(model, q.projected, q.source, target).abs().max() < 1e-10
    with pytest.raises(ValueError, match="a class and itself"):
        boundary.project(model, x, counterfactual=p.source)


def test_importance_is_the_first_order_split_of_the_margin():
    model = linear_toy([[1.0, -2.0], [-0.5, 0.5]], [0.3, -0.1])  # f_0 - f_1 = 1.5 x0 - 2.5 x1 + .4
    x = torch.randn(20, 2, dtype=torch.float64)
    p = boundary.project(model, x)
    signed = torch.tensor([1.5, -2.5], dtype=torch.float64) * (x - p.projected)
    sign = torch.where(p.source == 0, 1.0, -1.0).double()[:, None]
    assert torch.allclose(boundary.importance(model, p), (sign * signed).abs())
    assert torch.allclose((sign * signed).sum(dim=1), p.margin)  # exact for a linear model


def test_captum_style_attribute():
    model = tiny_image_model().double().eval()
    x = torch.rand(12, 1, 8, 8, dtype=torch.float64)
    explainer = boundary.BoundaryImportance(model)
    default = explainer.attribute(x)
    assert default.shape == x.shape and (default >= 0).all() and default.sum() > 0
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    assert torch.allclose(explainer.attribute(x, target=predicted), default)
    other = (predicted + 1) % 3
    assert not torch.allclose(explainer.attribute(x, target=other), default)


def not_predicted_as(model, x, target):
    """Rows of `x` not already predicted as `target` (all rows when `target` is None)."""
    if target is None:
        return torch.arange(len(x))
    with torch.no_grad():
        return (model(x).argmax(1) != target).nonzero()[:, 0]


@pytest.mark.parametrize("margin", [0.0, 0.5, 3.0])
def test_crossed_counterfactual_lands_past_the_boundary_by_the_margin(margin):
    model = toy_model(classes=3, seed=2)
    x = blobs(60)
    for target in (None, 2):
        p = boundary.project(model, x[not_predicted_as(model, x, target)], counterfactual=target)
        crossed = boundary.cross(model, p, margin, batch_size=7)
        gap = logit_gap(model, crossed, p.counterfactual, p.source)  # f_k - f_c
        assert torch.allclose(gap, torch.full_like(gap, margin), atol=1e-9)
        if margin == 0:
            assert (crossed - p.projected).abs().max() < 1e-12


def test_class_centres_are_the_mean_features_of_each_class():
    model = toy_model(classes=3, seed=4)
    x = blobs(90)
    y = torch.arange(3).repeat(30)
    centres = boundary.class_centres(model, x, y, 3, batch_size=7)
    with torch.no_grad():
        z = model.features(x)
    for c in range(3):
        assert torch.allclose(centres[c], z[y == c].mean(0), atol=1e-12)
    with pytest.raises(ValueError, match=r"every class in 0\.\.3.*\[3\]"):
        boundary.class_centres(model, x, y, 4)


def test_crossing_between_class_centres_moves_along_their_difference_by_the_margin():
    model = toy_model(classes=3, seed=0)
    torch.manual_seed(0)
    x = torch.randn(300, 2, dtype=torch.float64) * 3
    with torch.no_grad():
        y = model(x).argmax(1)  # centres of the model's own classes lie on their side
    centres = boundary.class_centres(model, x, y, 3)
    for target in (None, 2):
        p = boundary.project(model, x[not_predicted_as(model, x, target)], counterfactual=target)
        w, _ = boundary.hyperplane(model, p.source, p.counterfactual, (2,))
        d = centres[p.counterfactual] - centres[p.source]
        across = (w * d).sum(1) < 0
        assert across.any()
        crossed = boundary.cross(model, p, 1.5, batch_size=7, centres=centres)
        gap = logit_gap(model, crossed, p.counterfactual, p.source)  # f_k - f_c
        assert torch.allclose(gap, torch.full_like(gap, 1.5), atol=1e-9)
        with torch.no_grad():
            move = model.features(crossed) - p.features
        # along the centres' difference where it points across the boundary, the normal elsewhere
        along = torch.where(across[:, None], d, -w)
        cosine = torch.nn.functional.cosine_similarity(move, along, dim=1)
        assert torch.allclose(cosine, torch.ones_like(cosine), atol=1e-9)


def test_centres_that_do_not_point_across_fall_back_to_the_normal():
    model = linear_toy([[1.0, 0.0], [-1.0, 0.0]], [0.0, 0.0])  # f_0 - f_1 = 2 x_0
    x = torch.tensor([[1.0, 0.5]], dtype=torch.float64)  # class 0 by 2; crossed by 2 at x_0 = -1
    p = boundary.project(model, x)
    backwards = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)  # d = (2, 0)
    sideways = torch.tensor([[0.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)   # d = (-1, 1)
    normal = boundary.cross(model, p, 2.0)
    assert torch.allclose(normal, torch.tensor([[-1.0, 0.5]], dtype=torch.float64))
    assert torch.allclose(boundary.cross(model, p, 2.0, centres=backwards), normal)
    assert torch.allclose(boundary.cross(model, p, 2.0, centres=sideways),
                          torch.tensor([[-1.0, 2.5]], dtype=torch.float64))


def test_prototypes_are_the_mean_features_of_the_nearest_training_points_of_the_target():
    model = toy_model(classes=3, seed=0)
    torch.manual_seed(0)
    x = torch.randn(60, 2, dtype=torch.float64)
    y = torch.arange(60) % 3
    prototypes = boundary.Prototypes.of(model, x, y, neighbours=4, batch_size=7)
    with torch.no_grad():
        z_train = model.features(x)
    z = torch.randn(9, 2, dtype=torch.float64)
    target = torch.tensor([0, 1, 2] * 3)
    got = prototypes(z, target)
    for i in range(len(z)):  # brute force, one point at a time
        own = z_train[y == target[i]]
        nearest = (own - z[i]).norm(dim=1).argsort()[:4]
        assert torch.allclose(got[i], own[nearest].mean(0), atol=1e-12)
    with pytest.raises(ValueError, match="no training point of class 2"):
        boundary.Prototypes.of(model, x[y < 2], y[y < 2], 4)(z, target)


def test_crossing_towards_prototypes_stops_at_them_and_tops_up_along_the_normal():
    model = toy_model(classes=3, seed=0)
    torch.manual_seed(0)
    x = torch.randn(300, 2, dtype=torch.float64) * 3
    with torch.no_grad():
        y = model(x).argmax(1)
    guide = boundary.Guide.of("prototype", model, x, y, 3, neighbours=5)
    p = boundary.project(model, x[:100])
    for margin in (0.0, 2.0):  # 0: every prototype lies past the margin; 2: most fall short
        crossed = guide.cross(model, p, margin, batch_size=7)
        gap = logit_gap(model, crossed, p.counterfactual, p.source)
        assert torch.allclose(gap, torch.full_like(gap, margin), atol=1e-9)
        w, b = boundary.hyperplane(model, p.source, p.counterfactual, (2,))
        z = p.features
        towards = guide.prototypes(z, p.counterfactual) - z
        across = (w * towards).sum(1) < 0
        step = ((w * z).sum(1) + b + margin) / -(w * towards).sum(1)
        short = across & (step > 1)  # the prototype does not reach the margin
        assert across.float().mean() > 0.5 and short.any() == (margin > 0)
        with torch.no_grad():
            move = model.features(crossed) - z
        # past the margin: along the prototype's direction; short of it: the whole way to the
        # prototype, then the normal; not across: the normal alone
        along = torch.where(across[:, None], towards, -w)
        cosine = torch.nn.functional.cosine_similarity(move, along, dim=1)
        assert torch.allclose(cosine[~short], torch.ones_like(cosine[~short]), atol=1e-9)
        rest = move[short] - towards[short]
        assert torch.allclose(torch.nn.functional.cosine_similarity(rest, -w[short], dim=1),
                              torch.ones(int(short.sum()), dtype=torch.float64), atol=1e-9)


def test_walk_goes_from_the_input_through_the_projection_to_the_counterfactual():
    model = toy_model(classes=2, seed=3)
    x = blobs(30)[:5]
    p = boundary.project(model, x)
    margin = 2.0
    t_star = p.margin / (p.margin + margin)
    for i in range(len(x)):
        single = boundary.Projection(*(getattr(p, f)[i:i + 1] for f in (
            "inputs", "projected", "features", "projected_features", "source",
            "counterfactual", "margin")))
        steps = torch.tensor([0.0, float(t_star[i]), 1.0], dtype=torch.float64)
        walk = boundary.cross(model, single, margin, steps)[0]
        assert walk.shape == (3, 2)
        assert torch.allclose(walk[0], x[i], atol=1e-10)
        assert torch.allclose(walk[1], p.projected[i], atol=1e-10)
        assert torch.allclose(walk[2], boundary.cross(model, single, margin)[0], atol=1e-10)
