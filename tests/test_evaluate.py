"""The evaluate stage end to end on tiny (untrained) models: a complete, reproducible table."""

from __future__ import annotations

import json
import math

import pytest

from stages import evaluate
from tests.test_figures import assert_png
from xai.errors import ConfigError
from xai.models.blackbox import Architecture, save_blackbox
from xai.models.invertible import IMAGE_KIND, image_classifier, save_classifier
from xai.models.judge import Judge, save_judge
from xai.models.vibi import VibiModel, VibiSpec, save_vibi

TINY_EVAL = {"device": "cpu", "vibi.k": 1, "evaluate.num_images": 16, "evaluate.budgets": [1, 2],
             "evaluate.curve_points": 5, "evaluate.ig_steps": 4, "evaluate.robustness_images": 4,
             "evaluate.perturbations": 2, "evaluate.batch_size": 8}
METHODS = {"vibi", "l2x", "saliency", "input_x_gradient", "smoothgrad", "integrated_gradients",
           "gradient_shap", "occlusion", "lime", "kernel_shap", "random", "boundary_projection",
           "saliency_invertible", "control_fixed", "control_class_position"}
CI_MEASURES = ("posthoc_accuracy_k1", "fidelity_k2", "deletion_auc", "insertion_auc",
               "deletion_auc_road", "insertion_auc_road", "encoding", "randomization_floor")


@pytest.fixture
def models(tmp_path):
    """Untrained but well-formed black box, judge, VIBI, L2X and invertible models for 1 x 8 x 8."""
    paths = {name: tmp_path / f"{name}.pt"
             for name in ("blackbox", "judge", "vibi", "l2x", "invertible")}
    spec = Architecture("small_cnn", 1, 2, 8, 4)
    save_blackbox(spec.build(), spec, ("left", "right"), paths["blackbox"])
    save_judge(Judge(spec, chunk=4), paths["judge"])
    for name in ("vibi", "l2x"):
        save_vibi(VibiModel(VibiSpec("ResNet_4x", 1, 0.25, 1, 8, 8, 2, 1)), paths[name])
    net = image_classifier((1, 8, 8), 2, downsample=[2, 4], blocks=[1, 1], hidden=[4, 4],
                           kernel=[3, 1])
    save_classifier(net, paths["invertible"], IMAGE_KIND)
    return paths


def run_evaluate(params_path, data, models, out):
    outputs = {"metrics": out / "evaluation.json", "differences": out / "differences.json",
               "table": out / "table.md",
               "curves-figure": out / "curves.png", "measures-figure": out / "measures.png",
               "cost-figure": out / "cost.png", "timings": out / "timings.json"}
    training = {}
    for name, seconds in (("vibi", 30.0), ("l2x", 20.0)):  # what train_vibi / train_l2x write
        training[f"{name}-timings"] = out / f"{name}_training.json"
        training[f"{name}-timings"].parent.mkdir(parents=True, exist_ok=True)
        training[f"{name}-timings"].write_text(json.dumps({"train_seconds": seconds}))
    evaluate.main(["--params", str(params_path), "--data", str(data),
                   *[a for k, p in {**models, **training, **outputs}.items()
                     for a in (f"--{k}", str(p))]])
    return outputs


def test_every_method_times_every_measure_reproducibly(tiny_images, models, params, tmp_path):
    p = params(TINY_EVAL)
    first = run_evaluate(p, tiny_images, models, tmp_path / "a")
    result = json.loads(first["metrics"].read_text())
    table, judge = result["methods"], result["judge"]
    assert set(table) == METHODS
    measures = set(table["vibi"])
    for row in table.values():
        assert set(row) == measures
        assert all(not (isinstance(v, float) and math.isnan(v)) for v in row.values())
    for name in CI_MEASURES:
        assert {name, f"{name}_ci_low", f"{name}_ci_high"} <= measures
        low, mean, high = (table["vibi"][f"{name}{s}"] for s in ("_ci_low", "", "_ci_high"))
        assert low <= mean <= high
    assert {"sparseness", "infidelity", "max_sensitivity", "randomization_spearman_top"} <= measures
    assert {"judge_agreement_k1", "judge_agreement_k2"} <= set(judge)
    assert table["boundary_projection"]["explains"] == "invertible"
    differences = json.loads(first["differences"].read_text())
    assert "l2x" in differences and "vibi" not in differences
    for figure in ("curves-figure", "measures-figure", "cost-figure"):
        assert_png(first[figure])
    cost = json.loads(first["timings"].read_text())["cost"]
    assert set(cost["methods"]) == METHODS and cost["training_seconds"] == {"vibi": 30.0,
                                                                            "l2x": 20.0}
    assert table["vibi"]["model_evaluations_per_image"] == 0  # the explainer alone explains
    assert table["occlusion"]["model_evaluations_per_image"] == 1 + 4  # the image, each chunk
    steps = TINY_EVAL["evaluate.ig_steps"]  # passes through its own channels-last copy, counted
    assert table["integrated_gradients"]["model_evaluations_per_image"] == steps
    for amortised in ("vibi", "l2x"):
        assert set(cost["break_even_images"][amortised]) == METHODS - {"vibi", "l2x"}
    assert "| boundary_projection |" in first["table"].read_text()
    assert math.isfinite(judge["judge_agreement_k1"])
    second = run_evaluate(p, tiny_images, models, tmp_path / "b")
    assert second["metrics"].read_text() == first["metrics"].read_text()


def test_road_budgets_add_their_measures_and_change_no_other(tiny_images, models, params,
                                                            tmp_path):
    plain = run_evaluate(params(TINY_EVAL), tiny_images, models, tmp_path / "plain")
    road = run_evaluate(params({**TINY_EVAL, "evaluate.road_budgets": True}), tiny_images, models,
                        tmp_path / "road")
    plain_rows = json.loads(plain["metrics"].read_text())["methods"]
    road_rows = json.loads(road["metrics"].read_text())["methods"]
    for name, row in road_rows.items():
        added = {k for k in row if "_road_k" in k}
        assert added == {f"{m}_road_k{b}{s}" for m in ("posthoc_accuracy", "fidelity")
                         for b in (1, 2) for s in ("", "_ci_low", "_ci_high")}
        assert 0 <= row["posthoc_accuracy_road_k1"] <= 1 and 0 <= row["fidelity_road_k2"] <= 1
        assert {k: v for k, v in row.items() if k not in added} == plain_rows[name]


def test_random_draws_add_each_methods_gain_over_random_and_change_nothing_else(
        tiny_images, models, params, tmp_path):
    plain = run_evaluate(params(TINY_EVAL), tiny_images, models, tmp_path / "plain")
    drawn = run_evaluate(params({**TINY_EVAL, "evaluate.random_draws": 4}), tiny_images, models,
                         tmp_path / "drawn")
    plain_rows = json.loads(plain["metrics"].read_text())["methods"]
    drawn_rows = json.loads(drawn["metrics"].read_text())["methods"]
    for name, row in drawn_rows.items():
        added = {k for k in row if "_over_random_" in k}
        assert added == {f"fidelity_over_random_k{b}{s}" for b in (1, 2)
                         for s in ("", "_ci_low", "_ci_high")}
        assert -1 <= row["fidelity_over_random_k1"] <= 1
        assert {k: v for k, v in row.items() if k not in added} == plain_rows[name]
    assert drawn["differences"].read_text() == plain["differences"].read_text()
    assert "### Gain over random chunks" in drawn["table"].read_text()
    with pytest.raises(ConfigError, match=r"evaluate\.random_draws"):
        run_evaluate(params({**TINY_EVAL, "evaluate.random_draws": -1}), tiny_images, models,
                     tmp_path / "bad")


def test_tracked_evaluation_logs_the_table_and_figures(tiny_images, models, params, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    p = params({**TINY_EVAL, "tracking.enabled": True, "tracking.uri": uri})
    run_evaluate(p, tiny_images, models, tmp_path / "out")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("xai").experiment_id],
                                "tags.`xai.stage` = 'evaluate'")
    assert run.data.metrics["vibi.posthoc_accuracy_k1"] >= 0
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/curves.png", "figures/measures.png", "figures/cost.png"}


def test_budget_above_the_chunk_count_is_rejected(tiny_images, models, params, tmp_path):
    p = params({**TINY_EVAL, "evaluate.budgets": [1, 8]})
    with pytest.raises(ConfigError, match=r"evaluate\.budgets = \[1, 8\].*4 chunks"):
        run_evaluate(p, tiny_images, models, tmp_path)


def test_colour_images_with_pixel_chunks_evaluate_completely(tmp_path, params):
    """The CIFAR-10 shape of the problem (3 channels, `Unet` 1-pixel chunks shared by the
    channels, the black box's and the judge's passes in bf16 and channels-last, as the CIFAR-10
    settings run them) once crashed Captum's max-sensitivity on a non-contiguous map."""
    from tests.conftest import separable
    from xai.data.prepared import Dataset, save_dataset

    data = tmp_path / "colour.pt"
    save_dataset(Dataset("tiny", ("left", "right"), separable(128, 3), separable(32, 3, seed=1),
                         separable(32, 3, seed=2)), data)
    paths = {name: tmp_path / f"{name}.pt"
             for name in ("blackbox", "judge", "vibi", "l2x", "invertible")}
    spec = Architecture("small_cnn", 3, 2, 8, 4)
    save_blackbox(spec.build(), spec, ("left", "right"), paths["blackbox"])
    save_judge(Judge(spec, chunk=1), paths["judge"])
    for name in ("vibi", "l2x"):
        save_vibi(VibiModel(VibiSpec("Unet", 1, 0.25, 3, 8, 8, 2, 4)), paths[name])
    net = image_classifier((3, 8, 8), 2, downsample=[2, 4], blocks=[1, 1], hidden=[4, 4],
                           kernel=[3, 1])
    save_classifier(net, paths["invertible"], IMAGE_KIND)
    p = params({**TINY_EVAL, "vibi.k": 4, "vibi.explainer_type": "Unet",
                "evaluate.budgets": [2, 8], "evaluate.precision": "bf16"})
    out = run_evaluate(p, data, paths, tmp_path / "out")
    table = json.loads(out["metrics"].read_text())["methods"]
    assert set(table) == METHODS
    assert all(math.isfinite(v) for row in table.values() for v in row.values()
               if isinstance(v, float))
