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
from xai.models.blackbox import architecture, load_blackbox, load_probabilities
from xai.pipeline.config import load_config

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
