"""The MLflow runs table compares pipelines: each parent run carries the pipeline's params and its
stages' headline metrics, and the experiment is a machine-learning one (runs, not traces)."""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from tests.test_blackbox import TINY, run_stage
from xai.pipeline import tracking
from xai.pipeline.config import load_config


def test_parent_runs_carry_params_and_headline_metrics(tiny_images, params, tmp_path,
                                                       monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = {}
    for pipeline, lr in (("pipe-a", 0.003), ("pipe-b", 0.01)):  # two pipelines, one knob apart
        monkeypatch.setenv("XAI_PIPELINE_ID", pipeline)
        p = params({**TINY, "blackbox.lr": lr, "tracking.enabled": True, "tracking.uri": uri},
                   name=f"{pipeline}.yaml")
        files = run_stage(p, tiny_images, tmp_path / pipeline)
        metrics[pipeline] = json.loads(files["metrics"].read_text())

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("xai")
    assert experiment.tags[tracking.KIND_TAG] == "custom_model_development"
    parents = {r.data.tags["xai.pipeline"]: r for r in client.search_runs(
        [experiment.experiment_id], "tags.`xai.role` = 'pipeline'")}
    assert set(parents) == {"pipe-a", "pipe-b"}
    for pipeline, lr in (("pipe-a", "0.003"), ("pipe-b", "0.01")):
        parent = parents[pipeline].data
        assert parent.params["blackbox.lr"] == lr
        assert parent.params["vibi.k"] == "4" and parent.params["seed"] == "0"
        assert not any(key.startswith("tracking.") for key in parent.params)
        assert parent.metrics["train_blackbox.test_accuracy"] == metrics[pipeline]["test_accuracy"]
        assert "train_blackbox.train_seconds" not in parent.metrics  # timings stay on the stage
    # the runs view the UI opens from `runs_url`: the differing param and the headline metrics
    view = json.loads(client.get_experiment(experiment.experiment_id).tags[tracking.VIEW_TAG])
    columns = view["selectedColumns"]
    assert "params.`blackbox.lr`" in columns and "params.`seed`" not in columns
    assert "metrics.`train_blackbox.test_accuracy`" in columns
    assert "metrics.`evaluate.vibi.fidelity_k4`" in columns
    # a pipeline logged before parent runs carried params does not make every param differ
    client.create_run(experiment.experiment_id, tags={tracking.ROLE_TAG: "pipeline"})
    tracking.update_runs_view(client, experiment.experiment_id, 4)
    view = json.loads(client.get_experiment(experiment.experiment_id).tags[tracking.VIEW_TAG])
    assert "params.`blackbox.lr`" in view["selectedColumns"]
    assert "params.`seed`" not in view["selectedColumns"]
    url = tracking.runs_url(experiment.experiment_id, "http://127.0.0.1:5000")
    assert url.endswith(f"/#/experiments/{experiment.experiment_id}/runs?"
                        f"workflowType=machine_learning&viewStateShareKey={tracking.VIEW_KEY}")


def test_an_existing_experiment_gets_the_kind_tag(params, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("xai")  # as an older version of the project made it
    cfg = load_config(params({"tracking.enabled": True, "tracking.uri": uri}))
    exp_id = tracking.experiment_id(client, cfg.tracking)
    assert client.get_experiment(exp_id).tags[tracking.KIND_TAG] == "custom_model_development"
