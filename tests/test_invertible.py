"""The invertible network: exact inverses, the linear head's weight, saving and loading."""

from __future__ import annotations

import pytest
import torch

from xai.errors import CheckpointError
from xai.models.invertible import (
    IMAGE_KIND,
    TOY_KIND,
    Coupling,
    SpaceToDepth,
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
