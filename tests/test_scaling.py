"""experiments/scaling.py and the benchmark cases it re-shapes."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ROOT, experiment
from xai.pipeline.bench import evaluation_cases
from xai.pipeline.config import load_config


def test_the_fitted_exponent_recovers_a_power_law():
    exponent = experiment("scaling").exponent
    xs = [1.0, 2.0, 4.0, 16.0]
    assert exponent(xs, [3 * x ** 1.5 for x in xs]) == pytest.approx(1.5)
    assert exponent(xs, [7.0] * 4) == pytest.approx(0.0)


def test_cases_take_the_shape_and_scale_they_are_given():
    cfg = load_config(ROOT / "params.yaml")
    ig, road = evaluation_cases(cfg, torch.device("cpu"), shape=(1, 32, 32), scale=2)
    assert ig.batch == 128 and road.batch == 512
    ig.flop_step()  # the IG arithmetic runs at 32 x 32
    road.step()
