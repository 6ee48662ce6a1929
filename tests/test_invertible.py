"""The invertible network: exact inverses, the linear head's weight, saving and loading."""

from __future__ import annotations

import pytest
import torch

from xai.errors import CheckpointError
from xai.models.flow import (
    ActNorm,
    AffineCoupling,
    Coupling,
    InvertibleConv1x1,
    InvertibleNet,
    Logit,
    Permutation,
    SpaceToDepth,
)
from xai.models.invertible import (
    IMAGE_KIND,
    TOY_KIND,
    ChannelMLP,
    GaussianHead,
    InvertibleClassifier,
    image_classifier,
    load_classifier,
    reconstruction_error,
    save_classifier,
    toy_classifier,
)


def randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.5) -> torch.nn.Module:
    """Random weights everywhere (the image subnets start at zero, i.e. as identity blocks)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


def tiny_image_model(pool_side: int = 2) -> torch.nn.Module:
    """1x8x8 inputs -> 4x4x4 (3x3 convs) -> 16x2x2 (per-position MLP) when pool_side = 2."""
    return randomise(image_classifier((1, 8, 8), 3, [2, 4 // pool_side], [1, 2], [5, 6], [3, 1]),
                     std=0.2)


def test_coupling_inverse_is_exact_up_to_rounding():
    f = torch.nn.Sequential(torch.nn.Linear(3, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    g = torch.nn.Sequential(torch.nn.Linear(3, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    block = randomise(Coupling(f, g))
    x = torch.randn(64, 6)
    y = block(x)
    assert (y - x).abs().max() > 0.1  # the block does something
    assert (block.inverse(y) - x).abs().max() < 1e-5
    x1, x2 = x.chunk(2, dim=1)
    assert torch.allclose(y[:, :3], x1 + f(x2))
    assert torch.allclose(y[:, 3:], x2 + g(x1 + f(x2)))


def test_space_to_depth_is_a_permutation():
    x = torch.randn(2, 3, 6, 6)
    y = SpaceToDepth(3)(x)
    assert y.shape == (2, 27, 2, 2)
    assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    assert torch.equal(SpaceToDepth(3).inverse(y), x)


def test_toy_network_reconstructs_and_has_the_reference_size():
    torch.manual_seed(0)
    model = toy_classifier(2, 2, blocks=6, hidden=4)
    assert sum(p.numel() for p in model.parameters()) == 162
    randomise(model)
    x = torch.randn(500, 2) * 2
    assert (model.features(x) - x).abs().max() > 0.1
    assert reconstruction_error(model, x, batch_size=128) < 1e-5


def test_image_network_reconstructs_in_batches():
    model = tiny_image_model()
    x = torch.rand(50, 1, 8, 8)
    z = model.features(x)
    assert z.shape == (50, 16, 2, 2)
    assert (z - SpaceToDepth(2)(SpaceToDepth(2)(x))).abs().max() > 0.1  # not just a permutation
    assert torch.allclose(model.inverse(z), x, atol=1e-5)
    assert reconstruction_error(model, x, batch_size=7) < 1e-5


@pytest.mark.parametrize("pool_side", [1, 2])
def test_head_weight_over_the_whole_feature_tensor(pool_side):
    model = tiny_image_model(pool_side)
    z = torch.randn(10, *model.features(torch.rand(1, 1, 8, 8)).shape[1:])
    weight, bias = model.head.affine(z.shape[1:])
    assert weight.shape == (3, *z.shape[1:])
    manual = (z[:, None] * weight[None]).flatten(2).sum(dim=2) + bias
    assert torch.allclose(manual, model.head(z), atol=1e-5)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_image_model()
    path = tmp_path / "m.pt"
    save_classifier(model, path, IMAGE_KIND, {"dataset": "tiny"})
    loaded = load_classifier(path, IMAGE_KIND)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), model(x)) and not loaded.training
    with pytest.raises(CheckpointError, match="expected a 'xai.invertible_toy'"):
        load_classifier(path, TOY_KIND)
    state = torch.load(path, weights_only=True)
    state["config"]["hidden"] = [5, 7]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not match its architecture"):
        load_classifier(path, IMAGE_KIND)


def test_unsplittable_or_indivisible_shapes_are_refused():
    with pytest.raises(ValueError, match="cannot be down-sampled by 3"):
        image_classifier((1, 8, 8), 3, [3], [1], [4], [3])
    with pytest.raises(ValueError, match="49 channels cannot be split"):
        image_classifier((1, 7, 7), 3, [7], [1], [4], [1])
    with pytest.raises(ValueError, match="odd"):
        toy_classifier(3, 2, 1, 4)


def _jacobian_logdet(layer: torch.nn.Module, x: torch.Tensor) -> float:
    """log|det dy/dx| of one input (batch of 1), from the full Jacobian."""
    jac = torch.autograd.functional.jacobian(lambda v: layer(v.view_as(x)).flatten(), x.flatten())
    return float(torch.linalg.slogdet(jac)[1])


def _affine_coupling(channels: int) -> AffineCoupling:
    return AffineCoupling(ChannelMLP(channels // 2, 5, channels))


@pytest.mark.parametrize("make", [
    lambda: ActNorm(4), lambda: InvertibleConv1x1(4), lambda: Permutation(4),
    lambda: _affine_coupling(4), lambda: SpaceToDepth(2),
    lambda: Coupling(ChannelMLP(2, 5, 2), ChannelMLP(2, 5, 2)),
])
def test_flow_layers_invert_and_their_log_det_is_the_jacobians(make):
    torch.manual_seed(0)
    layer = randomise(make(), std=0.5).double()
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    y, logdet = layer.transform(x)
    assert torch.allclose(y, layer(x))
    assert (layer.inverse(y) - x).abs().max() < 1e-10
    for i in range(len(x)):
        assert float(logdet[i]) == pytest.approx(_jacobian_logdet(layer, x[i:i + 1]), abs=1e-8)


def test_logit_inverts_on_the_whole_line_and_maps_features_near_the_pixel_range():
    layer = Logit().double()
    x = torch.tensor([[-0.5, -0.05, 0.0, 1e-3, 0.3, 0.999, 1.0, 1.05, 1.7]], dtype=torch.float64)
    y, logdet = layer.transform(x)
    assert torch.isfinite(y).all() and (y.diff() > 0).all()  # monotone, finite on the domain
    assert (layer.inverse(y) - x).abs().max() < 1e-12
    assert float(logdet[0]) == pytest.approx(_jacobian_logdet(layer, x), abs=1e-8)
    inside = torch.rand(1, 1000, dtype=torch.float64)
    assert layer.inverse(layer(inside)).sub(inside).abs().max() < 1e-12
    far = layer.inverse(torch.tensor([[-30.0, -layer.tail, layer.tail, 30.0]], dtype=torch.float64))
    # within alpha / (1 - 2 alpha) of [0, 1] up to |y| = tail, then `slope` per logit
    assert -layer.alpha / (1 - 2 * layer.alpha) < far[0, 1] < 0 < 1 < far[0, 2]
    beyond = (30 - layer.tail) * layer.slope
    assert torch.allclose(far[0, [0, 3]], torch.stack([far[0, 1] - beyond, far[0, 2] + beyond]))
    saturated = torch.tensor([[-25.0, -9.0, 9.0, 25.0]])   # float32: exact round trip past the tails
    assert (layer.float()(layer.float().inverse(saturated)) - saturated).abs().max() < 1e-3


def test_whole_image_flow_log_det_is_the_jacobians():
    model = randomise(image_classifier((1, 4, 4), 3, [2, 2], [1, 1], [5, 6], [3, 1], 4.0),
                      std=0.2).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    z, logdet = model.net.transform(x)
    assert torch.allclose(z, model.features(x))
    assert (model.inverse(z) - x).abs().max() < 1e-10
    for i in range(len(x)):
        assert float(logdet[i]) == pytest.approx(_jacobian_logdet(model.net, x[i:i + 1]),
                                                 abs=1e-7)


def test_factored_out_channels_pass_the_later_stages_unchanged():
    """Multi-scale flow (split after stage 1): invertible, log-det the Jacobian's, and the half of
    stage 1's channels that left the flow come out as stage 1 left them (space-to-depth aside)."""
    model = randomise(image_classifier((1, 4, 4), 3, [2, 2], [1, 1], [5, 6], [3, 1], 4.0,
                                       split=[True, False]), std=0.2).double()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    z, logdet = model.net.transform(x)
    assert z.shape == (2, 16, 1, 1) and (model.inverse(z) - x).abs().max() < 1e-10
    for i in range(len(x)):
        assert float(logdet[i]) == pytest.approx(_jacobian_logdet(model.net, x[i:i + 1]),
                                                 abs=1e-7)
    stage1 = model.net.layers[2](model.net.layers[1](model.net.layers[0](x)))   # 4x2x2
    assert torch.equal(z[:, 8:], SpaceToDepth(2)(stage1)[:, 8:])
    with torch.no_grad():  # stage 2 transforms the active half
        assert (z[:, :8] - SpaceToDepth(2)(stage1)[:, :8]).abs().max() > 1e-3
    fixed = model.head.means.flatten(1)
    assert fixed[:, 8:].abs().max() == 0 and fixed[:, :8].abs().max() > 0  # on the active half


def test_multi_scale_initialisation_reaches_the_actnorms_behind_a_split():
    model = image_classifier((1, 4, 4), 3, [2, 2], [1, 1], [5, 6], [3, 3], split=[True, False])
    model.net.initialize(torch.rand(64, 1, 4, 4))
    scales = [m.log_scale for m in model.modules() if isinstance(m, ActNorm)]
    assert len(scales) == 2 and all(s.abs().max() > 0 for s in scales)


def test_learned_means_span_the_whole_feature_tensor_and_are_trained():
    model = image_classifier((1, 4, 4), 3, [2, 2], [1, 1], [5, 6], [3, 1], 2.0,
                             split=[True, False], means="learned")
    assert [n for n, _ in model.named_parameters() if "means" in n] == ["head.means"]
    assert model.head.means.flatten(1)[:, 8:].abs().max() > 0
    distances = torch.cdist(model.head.means.flatten(1), model.head.means.flatten(1))
    assert torch.allclose(distances[~torch.eye(3, dtype=torch.bool)], torch.full((6,), 2.0))
    model.log_joint(torch.rand(4, 1, 4, 4))[:, 0].sum().backward()
    assert model.head.means.grad.abs().max() > 0


def test_actnorm_initialisation_standardises_each_channel():
    x = torch.randn(64, 3, 5, 5) * torch.tensor([1.0, 4.0, 0.1]).view(1, 3, 1, 1) + 2
    layer = ActNorm(3)
    layer.initialize(x)
    y = layer(x)
    assert y.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (y.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-4


def test_gaussian_head_is_bayes_rule_over_fixed_separated_means():
    head = GaussianHead((3, 2, 2), classes=4, separation=5.0).double()
    means = head.means.flatten(1)
    distances = torch.cdist(means, means)
    assert torch.allclose(distances[~torch.eye(4, dtype=torch.bool)],
                          torch.full((12,), 5.0, dtype=torch.float64))
    z = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    log_joint = head.log_joint(z)
    gaussian = torch.distributions.Normal(head.means[None], 1.0).log_prob(z[:, None])
    assert torch.allclose(log_joint, gaussian.flatten(2).sum(2) - torch.log(torch.tensor(4.0)))
    assert torch.allclose(log_joint.softmax(1), head(z).softmax(1))
    weight, bias = head.affine((3, 2, 2))
    assert torch.allclose((z[:, None] * weight[None]).flatten(2).sum(2) + bias, head(z))
    assert not list(head.parameters())  # the means are not trained


def test_flow_density_integrates_to_one():
    """p(x) = sum_y p(x, y) of a 2-pixel flow integrates to ~1 over a grid covering its mass."""
    torch.manual_seed(0)
    layers = [ActNorm(2), InvertibleConv1x1(2), _affine_coupling(2)]
    model = InvertibleClassifier(randomise(InvertibleNet(layers), std=0.3),
                                 GaussianHead((2, 1, 1), 2, 2.0), {}).double()
    side = torch.linspace(-30, 30, 1201, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2, 1, 1)
    density = torch.logsumexp(model.log_joint(grid), dim=1).exp()
    assert float(density.sum() * (side[1] - side[0]) ** 2) == pytest.approx(1.0, abs=1e-3)
