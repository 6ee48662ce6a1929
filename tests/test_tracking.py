"""MLflow tracking round trip through a temporary sqlite store."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from mlflow.tracking import MlflowClient

from xai.errors import TrackingError
from xai.pipeline import tracking
from xai.pipeline.config import load_config


@pytest.fixture
def tracked(params, tmp_path, monkeypatch):
    monkeypatch.setenv("XAI_PIPELINE_ID", "pipe-1")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-a")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc1234")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return load_config(params({"tracking.enabled": True, "tracking.uri": uri})), uri


def test_stage_run_round_trip(tracked, tmp_path):
    cfg, uri = tracked
    figure = tmp_path / "fig.png"
    figure.write_bytes(b"\x89PNG fake")
    with tracking.stage_run(cfg, "train", {"vibi.k": 4}) as run:
        run.log_metrics({"loss": 2.0}, step=0)
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_artifact(figure, "figures")
    with tracking.stage_run(cfg, "evaluate", {}):
        pass

    client = MlflowClient(uri)
    runs = tracking.find_runs(cfg.tracking, "tags.`xai.pipeline` = 'pipe-1'")
    stages = {r.data.tags.get("xai.stage"): r for r in runs}
    assert set(stages) == {"train", "evaluate", None}  # None: the pipeline's parent run
    train = stages["train"]
    assert train.data.params == {"vibi.k": "4"}
    assert [m.value for m in client.get_metric_history(train.info.run_id, "loss")] == [2.0, 1.0]
    assert train.data.tags["dvc.exp_name"] == "exp-a"
    assert train.data.tags["dvc.baseline_rev"] == "abc1234"
    assert train.data.tags["mlflow.parentRunId"] == stages[None].info.run_id
    assert stages["evaluate"].data.tags["mlflow.parentRunId"] == stages[None].info.run_id
    assert train.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(train.info.run_id, "figures")] == ["figures/fig.png"]
    for run in stages.values():  # the presets params.yaml was composed from, on every run
        assert (run.data.tags["xai.data"], run.data.tags["xai.recipe"]) == ("mnist", "default")
    assert stages[None].data.params["preset.recipe"] == "default"


def test_failed_stage_marks_the_run_failed(tracked):
    cfg, _ = tracked
    with pytest.raises(ValueError):
        with tracking.stage_run(cfg, "broken", {}):
            raise ValueError("boom")
    (run,) = tracking.find_runs(cfg.tracking, "tags.`xai.stage` = 'broken'")
    assert run.info.status == "FAILED"


def test_default_store_is_absolute_sqlite_at_the_project_root(params, monkeypatch, tmp_path):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    uri = tracking.tracking_uri(load_config(params()).tracking)
    assert uri == f"sqlite:///{tmp_path}/mlflow.db"


def test_unreachable_server_fails_fast_naming_the_uri(params):
    cfg = load_config(params({"tracking.enabled": True, "tracking.uri": "http://127.0.0.1:9",
                              "tracking.timeout_s": 2}))
    with pytest.raises(TrackingError, match=r"http://127\.0\.0\.1:9 is unreachable"):
        with tracking.stage_run(cfg, "x", {}):
            pass


@pytest.fixture
def http_server():
    """A local HTTP server answering 200 to /health and `status` to everything else."""
    servers = []

    def start(health: int, status: int) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                self.send_response(health if self.path.endswith("/health") else status)
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *_args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize(("health", "status", "message"), [
    (404, 404, "answered HTTP 404 to /health: not a working MLflow tracking server"),
    (200, 500, "MLflow tracking store http://127.0.0.1:\\d+ failed"),
])
def test_a_server_that_is_not_mlflow_fails_with_one_message(params, http_server, monkeypatch,
                                                            health, status, message):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = http_server(health, status)
    cfg = load_config(params({"tracking.enabled": True, "tracking.uri": uri,
                              "tracking.timeout_s": 5}))
    with pytest.raises(TrackingError, match=message):
        with tracking.stage_run(cfg, "x", {}):
            pass


def test_tracking_off_needs_no_store(params):
    cfg = load_config(params({"tracking.uri": "http://127.0.0.1:9"}))
    with tracking.stage_run(cfg, "x", {"a": 1}) as run:
        run.log_metrics({"m": 1.0})
        assert isinstance(run, tracking.NullRun)


def test_outputs_lead_back_to_the_run_that_wrote_them(tracked, tmp_path):
    cfg, uri = tracked
    model, figure = tmp_path / "model.pt", tmp_path / "fig.png"
    model.write_bytes(b"weights v1")
    figure.write_bytes(b"png")
    with tracking.stage_run(cfg, "train", {}) as train:
        train.tag_outputs(model)
    with tracking.stage_run(cfg, "render", {}) as render:
        assert render.log_to_producer(model, figure, "figures")
        model.write_bytes(b"weights v2")  # a model no run claims
        assert not render.log_to_producer(model, figure, "figures")
    client = MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(train.run_id, "figures")] == ["figures/fig.png"]


def test_history_batches_epochs_into_mlflow_and_the_plots_file(tracked, tmp_path):
    from xai.train.loop import History

    cfg, uri = tracked
    with tracking.stage_run(cfg, "train", {}) as run:
        history = History(run, target_key="val_accuracy", target=0.5)
        for epoch, acc in enumerate((0.2, 0.6, 0.9), start=1):
            history.log(epoch, {"val_accuracy": acc})
            time.sleep(0.005)
        history.save(tmp_path / "plots.csv")
    points = MlflowClient(uri).get_metric_history(run.run_id, "val_accuracy")
    assert [(p.step, p.value) for p in points] == [(1, 0.2), (2, 0.6), (3, 0.9)]
    stamps = [p.timestamp for p in points]
    assert stamps == sorted(set(stamps))  # each epoch keeps the time it was logged, not the flush's
    assert history.seconds_to_target == history.rows[1]["wall_seconds"]
    assert (tmp_path / "plots.csv").read_text().splitlines()[0].startswith("epoch,val_accuracy")


def test_producer_record_finds_the_run_that_wrote_a_file_as_it_is_now(tracked, tmp_path):
    cfg, _ = tracked
    model = tmp_path / "vibi.pt"
    model.write_bytes(b"weights v1")
    with tracking.stage_run(cfg, "train_vibi", {"vibi.k": 4, "vibi.beta": 0.01}) as run:
        run.log_metrics({"test_fidelity": 0.9})
        run.tag_outputs(model)
    record = tracking.producer_record(cfg.tracking, model)
    assert record is not None and record.params == {"vibi.k": "4", "vibi.beta": "0.01"}
    assert record.metrics["test_fidelity"] == 0.9
    model.write_bytes(b"weights v2")  # changed since: no run wrote it
    assert tracking.producer_record(cfg.tracking, model) is None
    assert tracking.producer_record(cfg.tracking, tmp_path / "missing.pt") is None
