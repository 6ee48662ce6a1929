"""The randomisation sanity check beside its noise floor, all maps from the same call."""

from __future__ import annotations

import pytest
import torch

import xai
from tests.test_judge import QuadrantBlackbox, _cheating_setup
from xai.models.blackbox import Architecture

MEASURE = dict(chunk=2, k=1, budgets=(1,), curve_points=3, bootstrap=200, robustness_images=40,
               perturbations=2)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_kernel_shap_does_not_pass_on_sampling_noise_alone():
    """A model without parameters: randomising it changes nothing. KernelSHAP's maps of it then
    correlate 1 with themselves when the coalitions are drawn as in the first call (the old check
    compared maps from different draws and read their sampling noise as model dependence), while
    a second explanation with fresh coalitions gives the floor, far below 1."""
    x, _ = _cheating_setup(n=40)
    blackbox = QuadrantBlackbox()
    report = xai.evaluate({"kernel_shap": xai.KernelShap(blackbox, chunk=2, samples=8)},
                          blackbox, x, **MEASURE)
    row = report.table["methods"]["kernel_shap"]
    assert row["randomization_spearman_all"] == pytest.approx(1.0)
    assert row["randomization_spearman_top"] == pytest.approx(1.0)
    assert row["randomization_floor_ci_high"] < 0.9
    assert row["sanity_passed"] == 0.0


def test_a_deterministic_method_of_a_real_model_passes_below_its_floor_of_one():
    torch.manual_seed(1)  # not the seed the check re-initialises with
    model = Architecture("small_cnn", 1, 4, 8, 4).build().eval()
    x, _ = _cheating_setup(n=40)
    report = xai.evaluate({"saliency": xai.GradientSaliency(model),
                           "random": xai.RandomChunks(model, chunk=2, seed=0)}, model, x,
                          **MEASURE)
    saliency, random = (report.table["methods"][m] for m in ("saliency", "random"))
    assert saliency["randomization_floor"] == pytest.approx(1.0)
    assert saliency["randomization_spearman_all_ci_high"] < 0.9 and saliency["sanity_passed"] == 1
    # random chunks ignore the model: the randomised maps are the unrandomised ones
    assert random["randomization_spearman_all"] == pytest.approx(1.0)
    assert random["sanity_passed"] == 0.0
