"""experiments/vibi_variants.py: a variant's line keeps the evaluation's measures with their
intervals, and VIBI's paired differences to every reference method; `--init` starts every variant
from a trained pair."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

import xai
from tests.conftest import experiment, separable
from xai.models.vibi import VibiModel, VibiSpec, save_vibi
from xai.tensors import to_unit


def test_measured_keeps_every_headline_measure_and_the_paired_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2)).eval()
    x = to_unit(separable(24).x)
    how = {"chunk": 4, "k": 1, "budgets": (1,), "curve_points": 3, "robustness_images": 0,
           "encoding_folds": 2, "bootstrap": 50}
    report = xai.evaluate({"vibi": xai.GradientSaliency(model)}, model, x, **how)
    others = xai.evaluate({"other": xai.RandomChunks(model, 4, seed=0)}, model, x, **how)
    together = xai.evaluate({"vibi": xai.GradientSaliency(model),
                             "other": xai.RandomChunks(model, 4, seed=0)}, model, x,
                            reference="vibi", **how)
    variants = experiment("vibi_variants")
    line = variants.measured(report, "vibi", others)
    assert set(line["measures"]) == {"posthoc_accuracy_k1", "deletion_auc", "insertion_auc",
                                     "deletion_auc_road", "insertion_auc_road"}
    # no judge: no fidelity, and no encoding (it reads the judge's p(y | x_v))
    for mean, low, high in line["measures"].values():
        assert low <= mean <= high
    row = report.table["methods"]["vibi"]
    assert line["measures"]["deletion_auc"][0] == round(row["deletion_auc"], 4)
    assert set(line["minus"]) == {"other"}
    difference, low, high = line["minus"]["other"]["posthoc_accuracy_k1"]
    assert low <= difference <= high
    # the same numbers as one evaluation of both methods with VIBI as its reference
    paired = together.differences["other"]["posthoc_accuracy_k1"]
    assert [difference, low, high] == [round(paired[n], 4)
                                       for n in ("difference", "ci_low", "ci_high")]
    assert "minus" not in variants.measured(report, "vibi")


def test_a_variant_starts_from_the_given_pair_and_refuses_one_built_otherwise(tmp_path):
    variants = experiment("vibi_variants")
    spec = VibiSpec("Unet", 1, 0.25, 3, 32, 32, 10, 64, "smooth")
    torch.manual_seed(0)
    trained = VibiModel(spec)
    save_vibi(trained, tmp_path / "l2x.pt")
    started = variants.starting_pair(spec, tmp_path / "l2x.pt", torch.device("cpu"))
    for name, value in trained.state_dict().items():
        assert torch.equal(started.state_dict()[name], value)
    fresh = variants.starting_pair(spec, None, torch.device("cpu"))
    assert not all(torch.equal(fresh.state_dict()[n], v) for n, v in trained.state_dict().items())
    with pytest.raises(SystemExit, match="l2x.pt was trained for"):
        variants.starting_pair(replace(spec, k=16), tmp_path / "l2x.pt", torch.device("cpu"))
