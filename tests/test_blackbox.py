"""The black box: learns a separable set, saves and loads, deterministic, sane probabilities."""

from __future__ import annotations

import json

import pytest
import torch

from stages import train_blackbox
from tests.conftest import separable
from xai.data.augment import random_crop, random_flip
from xai.errors import CheckpointError, ConfigError
from xai.io import save_torch
from xai.models.blackbox import (
    Airbench,
    Architecture,
    architecture,
    load_blackbox,
    load_probabilities,
)
from xai.models.judge import Judge
from xai.pipeline.config import load_config
from xai.tensors import Autocast
from xai.train.blackbox import Lookahead, _Augmenter, triangle

TINY = {"blackbox.channels": 4, "blackbox.epochs": 1, "blackbox.batch_size": 16,
        "blackbox.lr": 0.003, "blackbox.schedule": "constant", "device": "cpu"}


def stage_files(out):
    """The stage's output paths under `out`, by argument name."""
    return {k: out / f"{k}.{ext}" for k, ext in
            (("model", "pt"), ("probs", "pt"), ("metrics", "json"), ("timings", "json"),
             ("plots", "csv"))}


def stage_args(params_path, data, files):
    return ["--params", str(params_path), "--data", str(data),
            *[a for k, p in files.items() for a in (f"--{k}", str(p))]]


def run_stage(params_path, data, out):
    files = stage_files(out)
    train_blackbox.main(stage_args(params_path, data, files))
    return files


def test_learns_a_separable_set_and_saves_loadable_outputs(tiny_images, params, tmp_path):
    files = run_stage(params(TINY), tiny_images, tmp_path)
    metrics = json.loads(files["metrics"].read_text())
    assert metrics["test_accuracy"] >= 0.95
    model = load_blackbox(files["model"])
    x = separable(32, seed=2)
    assert (model(x.x.float() / 255).argmax(1) == x.y).float().mean() >= 0.95
    probs = load_probabilities(files["probs"])
    assert [len(probs[s]) for s in ("train", "val", "test")] == [256, 32, 32]
    for p in probs.values():
        assert torch.allclose(p.sum(1), torch.ones(len(p)), atol=1e-5)
    header = files["plots"].read_text().splitlines()[0].split(",")
    assert {"epoch", "train_loss", "val_accuracy"} <= set(header)


def test_same_seed_same_result(tiny_images, params, tmp_path):
    a = run_stage(params(TINY), tiny_images, tmp_path / "a")
    b = run_stage(params(TINY), tiny_images, tmp_path / "b")
    assert json.loads(a["metrics"].read_text())["test_loss"] == \
        json.loads(b["metrics"].read_text())["test_loss"]
    wa, wb = (torch.load(f["model"], weights_only=True)["state_dict"] for f in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resnet_on_colour_images(params):
    cfg = load_config(params({**TINY, "blackbox.arch": "auto"})).blackbox
    spec = architecture(cfg, (3, 16, 16), 5)
    assert spec.arch == "resnet"
    assert spec.build()(torch.rand(2, 3, 16, 16)).shape == (2, 5)
    assert architecture(cfg, (1, 28, 28), 10).arch == "small_cnn"
    with pytest.raises(ConfigError, match="divisible by 4"):
        architecture(load_config(params({"blackbox.arch": "small_cnn"})).blackbox, (1, 30, 30), 2)


def test_foreign_model_file_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    save_torch({"kind": "xai.blackbox", "architecture": {"arch": "small_cnn", "in_channels": 1,
                "num_classes": 10, "image_size": 28, "width": 8}, "state_dict": {"w": torch.ones(1)}},
               path)
    with pytest.raises(CheckpointError, match="does not match"):
        load_blackbox(path)


def test_augmentations_keep_shape_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    crop = random_crop(x, 2, g)
    assert crop.shape == x.shape
    # every crop is the image shifted: its non-zero values appear in the original, in order
    for img, out in zip(x, crop):
        kept = out[out != 0]
        assert torch.isin(kept, img).all() and (kept.diff() > 0).all()
    flipped = random_flip(x, torch.Generator().manual_seed(1))
    for img, out in zip(x, flipped):
        assert torch.equal(out, img) or torch.equal(out, img.flip(2))


# ----------------------------------------------------------------------------- airbench


def test_whitening_decorrelates_the_patches_it_was_set_from():
    torch.manual_seed(0)
    base = torch.rand(64, 3, 16, 16)
    images = 0.5 * base + 0.5 * base.roll(1, 3)  # neighbouring pixels correlated
    net = Airbench(3, 4, 8)
    net.init_whitening(images, eps=0.0)
    with torch.no_grad():
        out = net.whiten(images).permute(0, 2, 3, 1).reshape(-1, net.whiten.out_channels)
    half = out[:, :net.whiten.out_channels // 2].double()  # the other half is its negation
    cov = (half - half.mean(0)).T @ (half - half.mean(0)) / len(half)
    assert half.mean(0).abs().max() < 1e-2  # centred by the bias (image, not patch, means)
    assert torch.allclose(cov, torch.eye(len(cov), dtype=cov.dtype), atol=1e-2)
    assert torch.equal(out[:, 12:], -out[:, :12])



def test_whitening_runs_in_fp32_under_bf16_autocast():
    """Nearly grey 8-bit images (little colour detail, as in a JPEG with subsampled chroma) give
    the patch covariance tiny eigenvalues, hence large filters whose sum the bias mostly cancels:
    rounded to bf16, inputs and weights alone move some outputs by a large share of their spread
    (the control below; on the CIFAR-10 JPEG copy 0.23 where the spread is 0.4-0.75); the layer
    keeps them in fp32."""
    torch.manual_seed(0)
    grey = torch.rand(64, 1, 16, 16).expand(-1, 3, -1, -1)
    images = ((grey + 0.004 * torch.randn(64, 3, 16, 16)).clamp(0, 1) * 255).round() / 255
    net = Airbench(3, 4, 8).eval()
    net.init_whitening(images)
    with torch.no_grad():
        exact = net.whitened(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_bf16 = net.whitened(images)
        rounded = torch.nn.functional.conv2d(images.bfloat16().float(),
                                             net.whiten.weight.bfloat16().float(),
                                             net.whiten.bias.bfloat16().float())
    assert under_bf16.dtype == torch.float32 and torch.allclose(under_bf16, exact, atol=1e-5)
    assert (rounded - exact).pow(2).mean(dim=(0, 2, 3)).sqrt().max() > 0.1  # the control

def test_airbench_shapes_identity_start_and_size_check(params):
    net = Airbench(3, 10, 8).eval()
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    w = net.groups[1].conv2.weight  # square conv: starts as the identity
    assert torch.equal(w[:, :, 1, 1], torch.eye(w.shape[0])) and w[:, :, 0].abs().sum() == 0
    cfg = load_config(params({**TINY, "blackbox.arch": "airbench"})).blackbox
    with pytest.raises(ConfigError, match="at least 16 x 16"):
        architecture(cfg, (3, 8, 8), 10)


def test_judge_on_airbench_starts_as_the_black_box():
    torch.manual_seed(0)
    spec = Architecture("airbench", 3, 5, 16, 8)
    blackbox = spec.build()
    blackbox.init_whitening(torch.rand(32, 3, 16, 16))
    blackbox.eval()
    judge = Judge(spec, chunk=1).eval()
    judge.start_from(blackbox)
    x = torch.rand(4, 3, 16, 16)
    assert torch.allclose(judge(x, torch.ones_like(x)), blackbox(x), atol=1e-5)
    assert judge.net.whiten.weight[24:].abs().sum() > 0  # extra filters keep a fresh init


def test_triangle_schedule_and_lookahead():
    assert triangle(0, 100) == pytest.approx(0.2) and triangle(23, 100) == pytest.approx(1.0)
    assert triangle(100, 100) == pytest.approx(0.07)
    net = torch.nn.Linear(2, 1)
    start = net.weight.detach().clone()
    look = Lookahead(net, total_steps=10, every=5)
    with torch.no_grad():
        net.weight.add_(1.0)
    look.step(5)  # decay 0.95^5 * 0.5^3: the slow copy moves that far less than all the way
    decay = 0.95 ** 5 * 0.5 ** 3
    assert torch.allclose(net.weight, start + (1 - decay))
    with torch.no_grad():
        net.weight.add_(1.0)
    look.finish()  # decay 1: back to the slow copy
    assert torch.allclose(net.weight, start + (1 - decay))


def test_alternating_flips_mirror_each_image_in_every_other_epoch(params):
    cfg = load_config(params({**TINY, "blackbox.augment": "crop_flip", "blackbox.crop_padding": 0,
                              "blackbox.alternate_flips": True})).blackbox
    augment = _Augmenter(cfg, 3, 8, torch.Generator().manual_seed(0))
    x = torch.rand(8, 3, 4, 4)
    idx = torch.arange(8)
    one, two, three = (augment(x, idx, epoch) for epoch in (1, 2, 3))
    flipped = (one == x.flip(3)).flatten(1).all(1)
    assert 0 < flipped.sum() < 8  # a random half to start
    assert torch.equal(two, torch.where(flipped[:, None, None, None], x, x.flip(3)))
    assert torch.equal(three, one)


def test_reflect_crop_shifts_in_the_mirrored_edge():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    for seed in range(5):
        out = random_crop(x, 1, torch.Generator().manual_seed(seed), "reflect")
        assert torch.isin(out, x).all()  # no zeros shifted in


def test_autocast_wrapper_runs_bf16_returns_fp32_and_keeps_attributes():
    torch.manual_seed(0)
    net = Airbench(3, 4, 8).eval()
    net.architecture = "spec"
    wrapped = Autocast(net)
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    out = wrapped(x)
    assert out.dtype == torch.float32 and wrapped.architecture == "spec"
    assert torch.allclose(out, net(x), atol=0.05) and not torch.equal(out, net(x))  # bf16 inside
    out.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32


def test_small_cnn_pools_before_its_relus_with_the_same_outputs_and_gradients():
    """Against the textbook order (ReLU, then max-pool) with the same weights, bit for bit: the
    logits, the input gradients and the weight gradients."""
    torch.manual_seed(0)
    model = Architecture("small_cnn", 1, 10, 28, 8).build()
    conv1, _, _, conv2, _, _ = model.features
    textbook = torch.nn.Sequential(conv1, torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                   conv2, torch.nn.ReLU(), torch.nn.MaxPool2d(2), model.head)
    x = torch.rand(16, 1, 28, 28) - 0.3
    grads = []
    for net in (model, textbook):
        xi = x.clone().requires_grad_(True)
        out = net(xi)
        out.pow(2).sum().backward()
        grads.append((out.detach(), xi.grad, conv1.weight.grad.clone(), conv2.weight.grad.clone()))
        net.zero_grad(set_to_none=True)
    for ours, theirs in zip(*grads, strict=True):
        assert torch.equal(ours, theirs)
