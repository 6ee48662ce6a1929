"""The literature's counterfactual measures (issue 30): IM1, IM2, FID, the reference rows and the
normalised IM1, the measurement models and their stage, on tiny synthetic data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from stages import evaluate_counterfactuals, train_measurement_models
from tests.conftest import ROOT, experiment
from tests.test_train_invertible import TINY, run_stage
from xai.data.prepared import Split
from xai.errors import ConfigError
from xai.evaluation.counterfactual_measures import (
    MEASURES,
    Crossings,
    frechet_distance,
    frechet_interval,
    im1_im2,
    measure_crossings,
    normalised_im1,
    real_stand_ins,
)
from xai.evaluation.uncertainty import resample_indices
from xai.models.blackbox import Architecture, save_blackbox
from xai.models.measurement import (
    MeasurementSpec,
    build,
    load_measurement_models,
    save_measurement_models,
)
from xai.pipeline.config import load_config

MEASUREMENT_TINY = {"measurement.pretrain_epochs": 1, "measurement.class_ae_epochs": 1,
                    "measurement.all_ae_epochs": 1, "measurement.oracle_epochs": 1,
                    "measurement.oracle_hidden": [16, 8], "measurement.batch_size": 8,
                    "measurement.class_batch_size": 4, "measurement.check_images": 6,
                    "measurement.eval_batch_size": 5, "measurement.precision": "fp32",
                    "invertible.counterfactual.fid_resamples": 10}


def _constant_output(models, group: int | None, value: float) -> None:
    """Make class `group`'s autoencoder (None: the all-class one) output `value` everywhere."""
    last = (models.all_ae.net if group is None else models.class_aes.net)[-1]
    with torch.no_grad():
        out = last.out_channels if group is None else last.out_channels // models.spec.classes
        rows = slice(None) if group is None else slice(group * out, (group + 1) * out)
        last.weight[rows] = 0
        last.bias[rows] = value


def _models(classes: int = 3):
    torch.manual_seed(0)
    return build(MeasurementSpec((1, 8, 8), classes, (6,))).eval()


def test_im1_is_zero_at_the_target_autoencoders_fixed_point():
    models = _models()
    _constant_output(models, 1, -0.5)  # class 1's autoencoder maps everything to black
    _constant_output(models, 0, 0.25)
    black = torch.zeros(2, 1, 8, 8)  # scaled to -0.5: class 1's fixed point
    im1, _ = im1_im2(models, black, source=torch.tensor([0, 0]), target=torch.tensor([1, 1]))
    assert torch.equal(im1, torch.zeros(2, dtype=torch.float64))
    # the other way round, the ratio is the squared errors' ratio: 64 * 0.75^2 / 0 -> huge
    im1, _ = im1_im2(models, black, source=torch.tensor([1, 1]), target=torch.tensor([0, 0]))
    assert bool((im1 > 1e6).all())


def test_im2_is_zero_when_the_target_and_all_class_autoencoders_agree():
    models = _models()
    _constant_output(models, 2, 0.1)
    _constant_output(models, None, 0.1)
    x = torch.rand(4, 1, 8, 8)
    _, im2 = im1_im2(models, x, source=torch.zeros(4, dtype=torch.int64),
                     target=torch.full((4,), 2))
    assert torch.equal(im2, torch.zeros(4, dtype=torch.float64))
    _constant_output(models, None, 0.3)  # 0.2 apart everywhere: 64 * 0.04 / ||x - 0.5||_1
    _, im2 = im1_im2(models, x, source=torch.zeros(4, dtype=torch.int64),
                     target=torch.full((4,), 2))
    expected = 64 * 0.2 ** 2 / (x - 0.5).abs().flatten(1).sum(1).double()
    assert torch.allclose(im2, expected, rtol=1e-5)


def test_the_grouped_class_autoencoders_match_each_class_alone():
    models = _models()
    x = torch.rand(5, 1, 8, 8) - 0.5
    every = models.class_aes(x)
    for j in range(3):
        assert torch.allclose(models.class_aes.one(j, x), every[:, j], atol=1e-6)
    chosen = torch.tensor([2, 0, 1, 1, 2])
    assert torch.allclose(models.class_aes.reconstruct(x, chosen), every[torch.arange(5), chosen],
                          atol=1e-6)


def test_fid_of_identical_sets_is_zero_and_of_shifted_gaussians_the_squared_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 5, generator=g, dtype=torch.float64) @ torch.randn(
        5, 5, generator=g, dtype=torch.float64)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)
    # different covariances: the closed form for diagonal ones, sum (sqrt(s1) - sqrt(s2))^2
    b = torch.randn(200000, 2, generator=g, dtype=torch.float64)
    c = torch.randn(200000, 2, generator=g, dtype=torch.float64) * torch.tensor([2.0, 3.0],
                                                                               dtype=torch.float64)
    assert frechet_distance(b, c) == pytest.approx((2 - 1) ** 2 + (3 - 1) ** 2, rel=0.02)
    interval = frechet_interval(a, a + shift, resample_indices(len(a), 20, 0))
    assert interval.low <= interval.mean <= interval.high
    assert interval.mean == pytest.approx(float(shift.pow(2).sum()), rel=1e-6)


def test_normalised_im1_at_its_anchors():
    g = torch.Generator().manual_seed(1)
    real = torch.rand(50, generator=g) * 0.5
    unchanged = 1.0 + torch.rand(50, generator=g)
    indices = resample_indices(50, 30, 0)
    at_real = normalised_im1(real, real, unchanged, indices)
    at_unchanged = normalised_im1(unchanged, real, unchanged, indices)
    assert (at_real.mean, at_real.low, at_real.high) == pytest.approx((0, 0, 0), abs=1e-12)
    assert (at_unchanged.mean, at_unchanged.low, at_unchanged.high) == pytest.approx((1, 1, 1))
    half = normalised_im1((real + unchanged) / 2, real, unchanged, indices)
    assert half.mean == pytest.approx(0.5)


def test_real_stand_ins_are_of_the_target_class_and_never_the_image_itself():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    target = torch.tensor([1, 2, 0, 1, 0, 1, 1, 2])
    own = torch.arange(8)
    for seed in range(20):
        picked = real_stand_ins(labels, target, own, torch.Generator().manual_seed(seed))
        assert torch.equal(labels[picked], target)
        assert not bool((picked == own).any())
    with pytest.raises(ValueError, match="at least two"):
        real_stand_ins(torch.tensor([0, 1, 1]), torch.tensor([0]), torch.tensor([1]),
                       torch.Generator())


class _Labeller(torch.nn.Module):
    """A black box that answers the class whose quadrant is brightest (tiny_images' classes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quads = [x[:, :, :4, :4], x[:, :, :4, 4:], x[:, :, 4:, :4]]
        return torch.stack([q.mean((1, 2, 3)) for q in quads], 1)


def test_reference_rows_unchanged_is_the_input_and_real_are_target_images():
    from tests.test_train_invertible import tiny_images
    test = tiny_images().test
    models = _models()
    n = len(test)
    inputs = test.x.float() / 255
    source = test.y.clone()
    target = (source + 1) % 3
    crossings = Crossings(torch.arange(n), inputs, inputs.clone(), source, target)
    indices = resample_indices(n, 50, 0)
    m = measure_crossings(models, _Labeller(), test, crossings, 4, torch.Generator().manual_seed(0),
                          indices, indices[:10], "cf")
    for measure in MEASURES + ("fid", "fid_real"):
        assert m[f"cf_{measure}"] == pytest.approx(m[f"cf_unchanged_{measure}"])
        for row in ("cf", "cf_real", "cf_unchanged"):
            assert m[f"{row}_{measure}_low"] <= m[f"{row}_{measure}"] + 1e-9
            assert m[f"{row}_{measure}"] <= m[f"{row}_{measure}_high"] + 1e-9
    assert m["cf_im1_normalised"] == pytest.approx(1.0)  # no change scores as no change
    assert m["cf_unchanged_fid"] == pytest.approx(0, abs=1e-6)  # against the inputs themselves
    assert m["cf_unchanged_l1"] == 0 and m["cf_unchanged_out_of_range"] == 0
    assert m["cf_unchanged_blackbox_validity"] == 0  # the labeller reads the source class
    assert m["cf_real_blackbox_validity"] == 1  # real images of the target class: the target
    assert m["cf_real_l1"] > 0 and m["cf_images"] == n


def test_measurement_models_save_and_load(tmp_path):
    models = _models()
    path = tmp_path / "m.pt"
    save_measurement_models(models, path)
    loaded = load_measurement_models(path)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(loaded.class_aes(x), models.class_aes(x))
    assert torch.equal(loaded.oracle.features(x), models.oracle.features(x))
    assert loaded.spec == models.spec


@pytest.mark.parametrize(("key", "value", "says"), [
    ("measurement.class_ae_epochs", 0, "measurement.class_ae_epochs = 0 is out of range"),
    ("measurement.lr", -1.0, "measurement.lr = -1.0 is out of range"),
    ("measurement.oracle_hidden", [], "measurement.oracle_hidden = [] is empty"),
    ("measurement.precision", "fp16", "measurement.precision = 'fp16' is not allowed"),
    ("invertible.counterfactual.fid_resamples", 2,
     "invertible.counterfactual.fid_resamples = 2 is out of range"),
    ("invertible.counterfactual.precision", "fp16",
     "invertible.counterfactual.precision = 'fp16' is not allowed"),
])
def test_bad_measurement_params_are_rejected_naming_the_key(params, key, value, says):
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        load_config(params({key: value}))


def test_bad_params_stop_the_stage_before_any_work(tmp_path, params):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="measurement.lr = 0 is out of range"):
        train_measurement_models.main(["--params", str(params({"measurement.lr": 0})), "--data",
                                       str(tmp_path / "missing.pt"), "--model",
                                       str(out / "m.pt"), "--metrics", str(out / "m.json"),
                                       "--timings", str(out / "t.json")])
    assert not out.exists()


def test_the_stages_write_the_models_and_every_measure(tmp_path, params, capsys):
    p = params({**TINY, **MEASUREMENT_TINY, "render.counterfactual_target": 2})
    out = run_stage(tmp_path, p)
    models_path, mpath = tmp_path / "measurement.pt", tmp_path / "measurement.json"
    train_measurement_models.main(["--params", str(p), "--data", str(tmp_path / "images.pt"),
                                   "--model", str(models_path), "--metrics", str(mpath),
                                   "--timings", str(tmp_path / "timings.json")])
    checks = json.loads(mpath.read_text())
    assert set(checks) == {"class_ae_mse_own_class", "class_ae_mse_other_classes",
                           "class_ae_own_class_best", "all_ae_mse", "oracle_accuracy"}
    assert "train_seconds" in json.loads((tmp_path / "timings.json").read_text())
    assert load_measurement_models(models_path).spec.classes == 3

    torch.manual_seed(0)
    spec = Architecture("small_cnn", 1, 3, 8, 4)
    blackbox = tmp_path / "blackbox.pt"
    save_blackbox(spec.build(), spec, ("a", "b", "c"), blackbox)
    metrics_path = tmp_path / "counterfactuals.json"
    evaluate_counterfactuals.main(["--params", str(p), "--data", str(tmp_path / "images.pt"),
                                   "--invertible", out["image-model"], "--blackbox",
                                   str(blackbox), "--measurement", str(models_path),
                                   "--metrics", str(metrics_path)])
    metrics = json.loads(metrics_path.read_text())
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["target_class"] == 2
    for prefix in ("runner_up", "target"):
        for row in (prefix, f"{prefix}_real", f"{prefix}_unchanged"):
            for measure in MEASURES + ("fid", "fid_real"):
                key = f"{row}_{measure}"
                assert metrics[f"{key}_low"] <= metrics[key] + 1e-9 <= metrics[f"{key}_high"] + 2e-9
        assert f"{prefix}_im1_normalised_high" in metrics
    # the runner-up row's black-box validity is the stage's own validity, measured twice
    assert metrics["runner_up_blackbox_validity"] == pytest.approx(
        metrics["image_counterfactual_validity"])
    assert metrics["runner_up_images"] == 15 and metrics["target_images"] <= 15
    assert metrics["runner_up_unchanged_fid"] == pytest.approx(0, abs=1e-6)

    # the black box's passes in bf16: every measure, the validities near fp32's, the rest equal
    fast = params({**TINY, **MEASUREMENT_TINY, "render.counterfactual_target": 2,
                   "invertible.counterfactual.precision": "bf16"})
    evaluate_counterfactuals.main(["--params", str(fast), "--data", str(tmp_path / "images.pt"),
                                   "--invertible", out["image-model"], "--blackbox",
                                   str(blackbox), "--measurement", str(models_path),
                                   "--metrics", str(tmp_path / "bf16.json")])
    bf16 = json.loads((tmp_path / "bf16.json").read_text())
    assert set(bf16) == set(metrics)
    for key, value in metrics.items():
        if "validity" in key and "oracle" not in key:
            assert bf16[key] == pytest.approx(value, abs=0.2)
        else:
            assert bf16[key] == pytest.approx(value, rel=1e-6, abs=1e-9)

    # experiments/counterfactual_measures_sweep.py on the same models: a line per move and margin
    sweep = experiment("counterfactual_measures_sweep")
    capsys.readouterr()
    sweep.main(["--params", str(p), "--data", str(tmp_path / "images.pt"), "--invertible",
                out["image-model"], "--blackbox", str(blackbox), "--measurement",
                str(models_path), "--directions", "class_centres", "prototype",
                "--neighbours", "1", "3", "--margins", "1", "--images", "9"])
    runs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["direction"], r.get("neighbours"), r["margin"]) for r in runs] == [
        ("class_centres", None, 1), ("prototype", 1, 1), ("prototype", 3, 1)]
    assert all(r["images"] == 9 and r["im1_normalised"][1] <= r["im1_normalised"][0]
               <= r["im1_normalised"][2] for r in runs)
    for r in runs:  # the rule picks the lowest FID among the runs that meet every line
        r.update(im1_normalised=[0.1, 0.0, 0.1], oracle_validity=[1.0, 1, 1],
                 blackbox_validity=[1.0, 1, 1], out_of_range=[0.0, 0, 0])
    assert sweep.chosen(runs) is min(runs, key=lambda r: r["fid_real"][0])
    runs[0]["out_of_range"] = [0.5, 0.5, 0.5]
    assert sweep.chosen(runs) is min(runs[1:], key=lambda r: r["fid_real"][0])

    # a named target the data set does not have is refused, naming the key
    bad = params({**TINY, **MEASUREMENT_TINY, "render.counterfactual_target": 3})
    with pytest.raises(ConfigError, match="render.counterfactual_target = 3"):
        evaluate_counterfactuals.main(["--params", str(bad), "--data",
                                       str(tmp_path / "images.pt"), "--invertible",
                                       out["image-model"], "--blackbox", str(blackbox),
                                       "--measurement", str(models_path), "--metrics",
                                       str(tmp_path / "bad.json")])


def test_a_split_without_a_class_stops_the_class_autoencoders():
    from xai.train.measurement import MeasurementConfig, train_class_autoencoders
    models = _models()
    train = Split(torch.zeros(6, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 0, 1, 1, 0, 1]))
    with pytest.raises(ConfigError, match=r"none of class \[2\]"):
        train_class_autoencoders(models, train, MeasurementConfig(), torch.device("cpu"),
                                 torch.Generator(), False)


def test_the_defaults_are_the_committed_sweeps_choice():
    """`invertible.counterfactual`'s direction, neighbours and margin are the run
    experiments/counterfactual_measures_sweep.py's rule picks from the committed sweep."""
    runs = [json.loads(line) for line in (ROOT / "experiments/counterfactual_measures_sweep.jsonl")
            .read_text().splitlines() if line]
    pick = experiment("counterfactual_measures_sweep").chosen(runs)
    cf = load_config(ROOT / "params.yaml").invertible.counterfactual
    assert (cf.direction, cf.neighbours, cf.margin) == (
        pick["direction"], pick.get("neighbours", cf.neighbours), pick["margin"])
    assert pick["im1_normalised"][2] <= 0.15
