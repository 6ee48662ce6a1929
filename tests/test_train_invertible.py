"""Stage train_invertible end to end on tiny data, and its parameter checks."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from stages import evaluate_counterfactuals, train_invertible
from tests.conftest import experiment
from xai.data.prepared import Dataset, Split, save_dataset
from xai.data.toy import make_toy
from xai.errors import ConfigError
from xai.io import load_torch
from xai.models.blackbox import Architecture, save_blackbox
from xai.models.invertible import IMAGE_KIND, TOY_KIND, load_classifier, toy_classifier
from xai.models.measurement import MeasurementSpec, build, save_measurement_models
from xai.pipeline.config import load_config
from xai.train.invertible import ToyRestarts
from xai.train.loop import cpu_threads

TINY = {
    "toy.n_samples": 90, "toy.dataset": "blobs",
    "invertible.toy.epochs": 4, "invertible.toy.milestones": [2, 3],
    "invertible.toy.restarts": 3, "invertible.toy.batch_size": 16,
    "invertible.image.downsample": [2, 2], "invertible.image.blocks": [1, 1],
    "invertible.image.hidden": [4, 8], "invertible.image.kernel": [3, 1],
    "invertible.image.epochs": 2, "invertible.image.batch_size": 8,
    "invertible.image.eval_batch_size": 7, "invertible.image.separation": 4.0,
    "invertible.counterfactual.batch_size": 6, "invertible.counterfactual.posthoc_chunk": 2,
}
METRICS = {"toy_test_accuracy", "max_reconstruction_error", "max_projection_residual",
           "image_test_accuracy", "image_max_reconstruction_error",
           "image_max_projection_residual"}


def tiny_images() -> Dataset:
    """3 classes of 1x8x8 uint8 images whose class shows as a bright quadrant."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        y = torch.arange(n) % 3
        x = torch.randint(0, 60, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
        for c in range(3):
            x[y == c, :, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 180
        return Split(x, y)

    return Dataset("tiny", ("a", "b", "c"), split(48), split(12), split(15))


def stage_argv(tmp_path, params_file) -> tuple[list[str], dict[str, str]]:
    """Arguments of the stage on tiny data written under `tmp_path`, and its output paths."""
    cfg = load_config(params_file)
    toy, images = tmp_path / "toy.pt", tmp_path / "images.pt"
    save_dataset(make_toy(cfg.toy), toy)
    save_dataset(tiny_images(), images)
    out = {name: str(tmp_path / "out" / f"{name}.{ext}") for name, ext in [
        ("toy-model", "pt"), ("image-model", "pt"), ("toy-projections", "pt"),
        ("image-projections", "pt"), ("toy-plot", "csv"), ("image-plot", "csv"),
        ("metrics", "json"), ("timings", "json")]}
    argv = ["--params", str(params_file), "--toy", str(toy), "--images", str(images)]
    for name, path in out.items():
        argv += [f"--{name}", path]
    return argv, out


def run_stage(tmp_path, params_file) -> dict[str, str]:
    argv, out = stage_argv(tmp_path, params_file)
    train_invertible.main(argv)
    return out


def test_stage_writes_models_projections_and_metrics(tmp_path, params):
    out = run_stage(tmp_path, params(TINY))
    metrics = json.loads(open(out["metrics"]).read())
    assert METRICS <= set(metrics)
    assert "wall_seconds" in json.loads(open(out["timings"]).read())
    assert metrics["max_reconstruction_error"] < 1e-5
    assert metrics["max_projection_residual"] < 1e-4
    assert metrics["image_max_reconstruction_error"] < 1e-4
    assert metrics["image_max_projection_residual"] < 1e-3

    toy_model = load_classifier(out["toy-model"], TOY_KIND)
    image_model = load_classifier(out["image-model"], IMAGE_KIND)
    assert toy_model.num_classes == 3 and image_model.spec["downsample"] == [2, 2]

    toy = load_torch(out["toy-projections"], kind="xai.invertible_projections")
    n_test = len(toy["test_y"])
    assert toy["projected"].shape == toy["importance"].shape == (n_test, 2)
    assert len(toy["curves"]) == 3 and toy["curves"][0]["inputs"].shape == (512, 2)
    with torch.no_grad():
        logits = toy_model(toy["projected"])
    c, k = toy["source"][:, None], toy["counterfactual"][:, None]
    gap = logits.gather(1, c) - logits.gather(1, k)
    assert gap.abs().max() < 1e-4
    accuracy = float((toy["source"] == toy["test_y"]).float().mean())
    assert accuracy == pytest.approx(metrics["toy_test_accuracy"])

    images = load_torch(out["image-projections"], kind="xai.invertible_projections")
    assert images["projected"].shape == (15, 1, 8, 8) and images["projected"].dtype == torch.float32

    toy_rows = open(out["toy-plot"]).read().splitlines()
    assert len(toy_rows) == 1 + 4 and "train_loss_2" in toy_rows[0]
    image_rows = open(out["image-plot"]).read().splitlines()
    assert len(image_rows) == 1 + 2 and "val_accuracy" in image_rows[0]


def test_parts_run_alone_and_a_part_needs_its_outputs(tmp_path, params):
    argv, out = stage_argv(tmp_path, params(TINY))
    toy_only = [a for i, a in enumerate(argv) if not _image_arg(argv, i)]
    train_invertible.main(toy_only)
    metrics = json.loads(open(out["metrics"]).read())
    assert "toy_test_accuracy" in metrics and "image_test_accuracy" not in metrics
    assert not (tmp_path / "out" / "image-model.pt").exists()
    with pytest.raises(SystemExit):
        train_invertible.main([a for a in argv if a != "--image-plot"
                               and a != out["image-plot"]])


def _image_arg(argv: list[str], i: int) -> bool:
    """Whether argv[i] is an --images / --image-* flag or its value."""
    flag = argv[i] if argv[i].startswith("--") else argv[i - 1]
    return flag == "--images" or flag.startswith("--image-")


def test_counterfactual_stage_writes_finite_measures(tmp_path, params, capsys):
    p = params({**TINY, "render.counterfactual_target": None})
    out = run_stage(tmp_path, p)
    torch.manual_seed(0)
    spec = Architecture("small_cnn", 1, 3, 8, 4)
    blackbox = tmp_path / "blackbox.pt"
    save_blackbox(spec.build(), spec, ("a", "b", "c"), blackbox)
    measurement = tmp_path / "measurement.pt"
    save_measurement_models(build(MeasurementSpec((1, 8, 8), 3, (8,))), measurement)
    metrics_path = tmp_path / "counterfactuals.json"
    evaluate_counterfactuals.main(["--params", str(p), "--data", str(tmp_path / "images.pt"),
                                   "--invertible", out["image-model"], "--blackbox",
                                   str(blackbox), "--measurement", str(measurement),
                                   "--metrics", str(metrics_path)])
    # the literature's measures (tests/test_counterfactual_measures.py) aside
    metrics = {k: v for k, v in json.loads(metrics_path.read_text()).items()
               if k.startswith("image_")}
    shares = {"image_counterfactual_validity", "image_counterfactual_reached",
              "image_counterfactual_out_of_range", "image_boundary_posthoc_accuracy_k4",
              "image_saliency_posthoc_accuracy_k4"}
    sizes = {"image_counterfactual_l1", "image_counterfactual_l2",
             "image_counterfactual_bits_per_dim", "image_test_bits_per_dim",
             "image_counterfactual_bits_per_dim_gap"}
    gap = "image_boundary_minus_saliency_posthoc_k4"
    intervals = {"image_counterfactual_validity", "image_counterfactual_out_of_range", gap}
    assert set(metrics) == shares | sizes | {gap} | {f"{key}_{end}" for key in intervals
                                                    for end in ("low", "high")}
    assert all(math.isfinite(v) for v in metrics.values())
    # the margin is over the source class only: a third class may win on the way (tiny model)
    assert 0.5 < metrics["image_counterfactual_reached"] <= 1.0
    for key in shares:
        assert 0 <= metrics[key] <= 1
    for key in intervals:
        assert metrics[f"{key}_low"] <= metrics[key] <= metrics[f"{key}_high"]
    assert metrics[gap] == pytest.approx(metrics["image_boundary_posthoc_accuracy_k4"]
                                         - metrics["image_saliency_posthoc_accuracy_k4"])
    assert metrics["image_counterfactual_l1"] > 0

    # experiments/counterfactual_sweep.py on the same models: one line per direction and margin
    capsys.readouterr()
    experiment("counterfactual_sweep").main([
        "--params", str(p), "--data", str(tmp_path / "images.pt"), "--invertible",
        out["image-model"], "--blackbox", str(blackbox), "--margins", "1", "3", "--images", "9"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["direction"], r["margin"]) for r in lines] == [
        ("class_centres", 1), ("class_centres", 3), ("normal", 1), ("normal", 3)]
    for r in lines:
        assert r["images"] == 9 and r["flow"]["epochs"] == TINY["invertible.image.epochs"]
        for key in ("validity", "out_of_range", "l1", "bits_per_dim_gap"):
            mean, low, high = r[key]
            assert low <= mean <= high


def test_image_net_that_does_not_fit_the_data_fails_before_any_work(tmp_path, params):
    with pytest.raises(ConfigError, match=r"invertible\.image does not fit tiny images"):
        run_stage(tmp_path, params({**TINY, "invertible.image.downsample": [2, 3]}))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("overrides, pattern", [
    ({"invertible.image.blocks": [1]}, r"invertible\.image\.blocks = \[1\] needs one entry per"),
    ({"invertible.image.kernel": [3, 2]}, r"invertible\.image\.kernel = \[3, 2\].*odd"),
    ({"invertible.image.split": [True]}, r"invertible\.image\.split = \[True\] needs one entry"),
    ({"invertible.image.means": "both"}, r"invertible\.image\.means = 'both'"),
    ({"invertible.image.downsample": [1, 7]}, r"invertible\.image\.downsample\[0\] = 1 is out"),
    ({"invertible.toy.milestones": [40, 20]}, r"invertible\.toy\.milestones = \[40, 20\]"),
    ({"invertible.toy.milestones": [20, 80]}, r"<= invertible\.toy\.epochs = 60"),
    ({"invertible.toy.momentum": 1.0}, r"invertible\.toy\.momentum = 1\.0 is out of range"),
    ({"invertible.toy.restarts": 0}, r"invertible\.toy\.restarts = 0 is out of range"),
    ({"invertible.image.threads": -1}, r"invertible\.image\.threads = -1 is out of range"),
    ({"invertible.image.warmup": "x"}, r"invertible\.image\.warmup = 'x' has the wrong type"),
])
def test_bad_invertible_params_name_the_key(params, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(params(overrides))


def test_cpu_threads_is_restored():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_restarts_trained_together_equal_separate_runs():
    torch.manual_seed(0)
    models = [toy_classifier(2, 3, blocks=2, hidden=4) for _ in range(2)]
    separate = copy.deepcopy(models)
    together = ToyRestarts(models)
    x, y = torch.randn(2, 16, 2), torch.randint(0, 3, (2, 16))
    optimizer = torch.optim.SGD(together.params.values(), lr=0.1, momentum=0.9)
    for _ in range(3):
        loss, _ = together.losses(x, y)
        optimizer.zero_grad()
        loss.sum().backward()
        optimizer.step()
    for r, model in enumerate(separate):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            alone = torch.nn.functional.cross_entropy(model(x[r]), y[r])
            optimizer.zero_grad()
            alone.backward()
            optimizer.step()
        trained = together.model(r)
        assert torch.allclose(trained(x[r]), model(x[r]), atol=1e-6)
        assert not torch.allclose(trained(x[r]), together.model(1 - r)(x[r]))
