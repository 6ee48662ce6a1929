"""The README's results are the committed metrics: no number drifts from its file."""

from __future__ import annotations

import json
import shutil

import pytest

from xai.pipeline.readme import BLOCKS, ROOT, render


def test_readme_results_match_the_committed_metrics():
    readme = (ROOT / "README.md").read_text()
    assert render(readme) == readme, "README drifted from metrics/: run python -m xai.pipeline.readme"


def test_a_changed_metric_changes_the_readme(tmp_path):
    for folder in ("metrics", "experiments"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    readme = (ROOT / "README.md").read_text()
    path = tmp_path / "metrics" / "vibi.json"
    metrics = json.loads(path.read_text())
    metrics["posthoc_accuracy"] = 0.123456
    path.write_text(json.dumps(metrics))
    changed = render(readme, tmp_path)
    assert changed != readme and "0.1235" in changed


def test_a_missing_block_is_named():
    with pytest.raises(ValueError, match="results:stages"):
        render("no blocks here")
    assert set(BLOCKS) == {"stages", "evaluation", "reliability", "vibi-variants",
                           "cifar-variants", "cifar-cpu-variants", "cifar-cpu", "bench",
                           "vibi-variants-judged", "counterfactual-sweep"}


def test_the_cifar_cpu_block_follows_its_pipeline_run(tmp_path):
    for folder in ("metrics", "experiments"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    path = tmp_path / "experiments" / "cifar_cpu_pipeline.json"
    run = json.loads(path.read_text())
    run["stage_seconds"]["train_vibi"] = 4321.0
    run["metrics"]["vibi"]["posthoc_accuracy"] = 0.654321
    run["params"]["vibi"]["epochs"] = 17
    path.write_text(json.dumps(run))
    changed = BLOCKS["cifar-cpu"](tmp_path)
    assert "| 4321 |" in changed and "0.654" in changed and "17 of VIBI" in changed


def test_the_bench_block_follows_the_committed_bench_runs(tmp_path):
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
    path = tmp_path / "experiments" / "bench.json"
    run = json.loads(path.read_text())
    run["cases"][0]["images_per_second"] = 98765.4
    path.write_text(json.dumps(run))
    assert "| 98765 |" in BLOCKS["bench"](tmp_path)
    assert "| 98765 |" not in BLOCKS["bench"](ROOT)
