"""params.yaml validation: every bad value is rejected with a message naming the key."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xai.devices import select_device
from xai.errors import ConfigError
from xai.pipeline.config import flatten, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_are_valid(params):
    cfg = load_config(params())
    assert cfg.data.dataset in ("mnist", "fashion_mnist", "cifar10", "folder")
    assert flatten(cfg.toy, "toy")["toy.dataset"] == cfg.toy.dataset


@pytest.mark.parametrize("overrides, pattern", [
    ({"data.dataset": "imagenet"}, r"data\.dataset = 'imagenet'.*mnist, fashion_mnist, cifar10, folder"),
    ({"toy.dataset": "spirals"}, r"toy\.dataset = 'spirals'.*moons, circles, blobs"),
    ({"data.val_fraction": 1.5}, r"data\.val_fraction = 1\.5 is out of range.*< 1"),
    ({"data.val_fraction": "a lot"}, r"data\.val_fraction = 'a lot' has the wrong type"),
    ({"toy.n_samples": 2.5}, r"toy\.n_samples = 2\.5 has the wrong type; expected an integer"),
    ({"toy.n_samples": 0}, r"toy\.n_samples = 0 is out of range"),
    ({"data.download": "yes"}, r"data\.download = 'yes'.*true or false"),
    ({"data.colour": True}, r"unknown key 'data\.colour'"),
    ({"extra": 1}, r"unknown key 'extra'"),
    ({"device": "tpu"}, r"device = 'tpu'"),
    ({"tracking.timeout_s": 0}, r"tracking\.timeout_s = 0"),
    ({"data.dataset": "folder", "data.folder": None}, r"data\.folder is required"),
    ({"vibi.k": 49}, r"vibi\.k = 49 is out of range; allowed: below the 49 chunks of ResNet_4x"),
    ({"vibi.explainer_type": "ResNet_8x", "vibi.k": 16}, r"vibi\.k = 16 .* 16 chunks"),
    ({"vibi.xpl_channels": 3}, r"vibi\.xpl_channels = 3 does not fit mnist's 1-channel"),
    ({"vibi.beta": -0.1}, r"vibi\.beta = -0\.1 is out of range; allowed: >= 0"),
    ({"vibi.explainer_type": "ResNet_3x"}, r"vibi\.explainer_type = 'ResNet_3x'.*ResNet_8x"),
    ({"blackbox.arch": "vgg"}, r"blackbox\.arch = 'vgg'.*small_cnn, resnet"),
    ({"blackbox.epochs": 0}, r"blackbox\.epochs = 0 is out of range; allowed: >= 1"),
    ({"vibi.batch_size": -8}, r"vibi\.batch_size = -8 is out of range"),
    ({"vibi.grid_images": -1}, r"vibi\.grid_images = -1 is out of range; allowed: >= 0"),
    ({"vibi.grid_images": 2.0}, r"vibi\.grid_images = 2\.0 has the wrong type"),
    ({"invertible.image.epochs": 0}, r"invertible\.image\.epochs = 0"),
    ({"invertible.image.noise": -0.1}, r"invertible\.image\.noise = -0\.1 is out of range"),
    ({"invertible.counterfactual.direction": "gradient"},
     r"invertible\.counterfactual\.direction = 'gradient'.*class_centres, normal"),
    ({"evaluate.budgets": [1, 64]}, r"evaluate\.budgets = \[1, 64\].*49 chunks"),
    ({"data.dataset": "cifar10", "vibi.xpl_channels": 3, "vibi.k": 70},
     r"vibi\.k = 70 is out of range for the evaluation.*64 such chunks"),
    ({"render.dpi": 5}, r"render\.dpi = 5 is out of range; allowed: >= 30 and <= 600"),
])
def test_bad_params_are_rejected_naming_the_key(params, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(params(overrides))


def test_missing_key_is_named(params, tmp_path):
    path = params()
    path.write_text(path.read_text().replace("  split_seed: 0\n", "", 1))
    with pytest.raises(ConfigError, match=r"missing key 'data\.split_seed'"):
        load_config(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_device_choice():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            select_device("cuda")


def test_a_cpu_can_be_treated_as_one_without_native_bf16():
    """XAI_CPU_BF16=0 makes `precision: auto` run fp32 on any CPU, as a laptop without native bf16
    runs it; an explicit `bf16` still runs bf16."""
    code = ("import torch; from xai.devices import use_bf16; cpu = torch.device('cpu'); "
            "print(use_bf16('auto', cpu), use_bf16('bf16', cpu), use_bf16('fp32', cpu))")
    env = {**os.environ, "XAI_CPU_BF16": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True", "False"]


@pytest.mark.parametrize("key, value, message", [
    ("vibi.xpl_channels", 1.0, r"vibi\.xpl_channels = 1\.0 is not allowed; choose one of: 1, 3"),
    ("vibi.tau_end", 1e-30, r"vibi\.tau_end = 1e-30 is out of range; allowed: >= 0\.001"),
    ("vibi.tau_end", 2.0, r"vibi\.tau_end = 2\.0 is above vibi\.tau_start"),
    ("tracking.experiment", "", r"tracking\.experiment = '' .*non-empty string"),
    ("seed", 2**40, r"seed = 1099511627776 is out of range; allowed: >= 0 and <= 2147483647"),
    ("evaluate.occlusion_stride", 3,
     r"evaluate\.occlusion_stride = 3 is out of range; allowed: <= evaluate\.occlusion_window"),
])
def test_values_that_cannot_work_are_rejected_naming_the_key(params, key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(params({key: value}))


def test_library_defaults_are_the_pipeline_defaults():
    """The library's settings classes default to what params.yaml holds (the MNIST defaults), so
    `xai.VIBI(...)` in a notebook and `dvc repro` start from the same settings."""
    cfg = load_config(ROOT / "params.yaml")
    sections = [cfg.data, cfg.toy, cfg.blackbox, cfg.vibi, cfg.invertible.toy,
                cfg.invertible.image]
    for section in sections:
        library = type(section)()
        differ = {f.name: (getattr(library, f.name), getattr(section, f.name))
                  for f in dataclasses.fields(section)
                  if getattr(library, f.name) != getattr(section, f.name)}
        assert not differ, f"{type(section).__name__}: library vs params.yaml {differ}"
