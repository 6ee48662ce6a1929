"""One MLflow server for a team: PostgreSQL and `mlflow server` (through
`python -m xai.pipeline.team server`) on loopback; two clones' pipelines logging to it at once;
the database down when a stage starts and lost in the middle of one."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, image_tree, separable, write_tar
from tests.servers import MlflowServer, Postgres, free_port
from tests.test_blackbox import TINY, stage_files
from tests.test_pipeline import DVC, _env, new_project, run
from tests.test_reliability import training
from tests.test_serving import _served_masks
from tests.test_train_invertible import TINY as TINY_INVERTIBLE
from xai.models.blackbox import Architecture, load_blackbox, save_blackbox
from xai.models.vibi import VibiModel, VibiSpec
from xai.pipeline import serving, tracking
from xai.pipeline.config import load_config
from xai.pipeline.tracking import PIPELINE_TAG, ROLE_TAG, STAGE_TAG, VIEW_TAG

#: the tiny pipeline each clone runs: a toy set and the invertible classifier on it, which logs
#: its metrics file and training curve as artifacts
STAGES = ("prepare_toy", "train_invertible_toy")


@dataclass(frozen=True)
class TeamServer:
    db: Postgres
    mlflow: MlflowServer
    artifacts: Path


@pytest.fixture(scope="module")
def team_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("team_server")
    db = Postgres()
    try:
        server = MlflowServer(db, folder / "artifacts", folder / "mlflow.log")
        try:
            yield TeamServer(db, server, folder / "artifacts")
        finally:
            server.stop()
    finally:
        db.remove()


def test_two_clones_log_their_pipelines_at_once_to_one_server(team_server, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = team_server.mlflow.uri
    archive = write_tar(tmp_path / "tiny.tar.gz", image_tree())
    origin = new_project(tmp_path / "origin", archive, {
        **{k: v for k, v in TINY_INVERTIBLE.items() if k.startswith(("toy.", "invertible.toy"))},
        "tracking.enabled": True, "tracking.uri": uri, "tracking.timeout_s": 30}, STAGES)
    run(["git", "add", "-A"], origin)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], origin)
    clones = {}
    for name in ("alice", "bob"):
        clones[name] = tmp_path / name
        run(["git", "clone", "-q", str(origin), str(clones[name])], tmp_path)
    running = {name: subprocess.Popen([DVC, "exp", "run", "-n", name, "-S", f"seed={seed}"],
                                      cwd=clones[name], env=_env(), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
               for name, seed in (("alice", 1), ("bob", 2))}
    for name, proc in running.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}:\n{out}"

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("xai")
    parents = client.search_runs([exp.experiment_id], f"tags.`{ROLE_TAG}` = 'pipeline'")
    by_name = {r.info.run_name: r for r in parents}
    assert set(by_name) == {"alice", "bob"}
    for name, seed in (("alice", 1), ("bob", 2)):
        parent = by_name[name]
        assert parent.data.params["seed"] == str(seed)
        stages = {r.data.tags["dvc.stage"]: r for r in client.search_runs(
            [exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")}
        assert set(stages) == set(STAGES)
        for stage in stages.values():
            assert stage.info.status == "FINISHED"
            assert stage.data.tags[PIPELINE_TAG] == parent.data.tags[PIPELINE_TAG]
        assert stages["prepare_toy"].data.metrics["train_size"] == 90 * 0.6
        trained = stages["train_invertible_toy"]
        written = json.loads((clones[name] / "metrics" / "invertible_toy.json").read_text())
        assert trained.data.metrics["toy_test_accuracy"] == written["toy_test_accuracy"]
        logged = {Path(a.path).name for a in client.list_artifacts(trained.info.run_id, "metrics")}
        assert logged == {"invertible_toy.json", "invertible_toy.csv"}
    # the artifacts went through the server into its store, not into the clones
    assert len(list(team_server.artifacts.rglob("invertible_toy.csv"))) == 2
    assert not any((clones[name] / "mlartifacts").exists() for name in clones)
    # the runs table's view shows the param that tells the two apart
    view = json.loads(client.get_experiment(exp.experiment_id).tags[VIEW_TAG])
    assert "params.`seed`" in view["selectedColumns"]




def test_a_stage_registers_its_explainer_through_the_server_and_it_loads_from_there(
        team_server, params, tmp_path, monkeypatch):
    """The served explainer (docs/serving.md) on the team's server: logged through its proxied
    artifact store, registered in PostgreSQL, loaded back from the server by its models:/ URI,
    answering as the module it was made from."""
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # nothing may land beside the clone
    uri = team_server.mlflow.uri
    cfg = load_config(params({"tracking.enabled": True, "tracking.uri": uri,
                              "serving.registered_model": "xai-vibi-team"}))
    spec = Architecture("small_cnn", 1, 2, 8, 4)
    save_blackbox(spec.build(), spec, ("left", "right"), tmp_path / "blackbox.pt")
    model = VibiModel(VibiSpec("ResNet_4x", 1, 0.25, 1, 8, 8, 2, 1)).eval()
    images = separable(4, seed=3).x.float() / 255
    with tracking.stage_run(cfg, "train_vibi", {}) as run:
        logged = serving.log_stage_explainer(
            run, model, tmp_path / "blackbox.pt", ("left", "right"), images[:1], cfg.serving,
            serving.explainer_tags("tiny", model.spec, 0.01, "vibi"), registered=True)
    assert logged["version"] == "1" and not (tmp_path / "mlartifacts").exists()
    client = MlflowClient(uri)
    version = client.get_model_version("xai-vibi-team", logged["version"])
    assert client.get_run(version.run_id).data.tags[STAGE_TAG] == "train_vibi"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    served = mlflow.pyfunc.load_model("models:/xai-vibi-team/1").predict(images.numpy())
    with torch.inference_mode():
        classes = load_blackbox(tmp_path / "blackbox.pt")(images).argmax(1)
        mask = model.pixel_mask(model.explain(images)[1]).bool()
    assert [p["class"] for p in served] == classes.tolist()
    assert torch.equal(_served_masks(served), mask)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_a_database_down_when_a_stage_starts_fails_it_in_one_line(team_server, params,
                                                                   tmp_path):
    uri, db = team_server.mlflow.uri, team_server.db
    p = params({"tracking.enabled": True, "tracking.uri": uri, "tracking.timeout_s": 10})
    out = tmp_path / "toy.pt"
    db.stop()
    try:
        proc = subprocess.run([sys.executable, "-m", "stages.prepare_toy", "--params", str(p),
                               "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        # the server itself, started on a database that is down
        server = subprocess.run(
            [sys.executable, "-m", "xai.pipeline.team", "server", "--db", db.uri,
             "--artifacts", str(tmp_path / "artifacts"), "--port", str(free_port())],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={**os.environ, "PGPASSFILE": str(db.pgpass)})
    finally:
        db.start()
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc.stderr)
    assert line.startswith(f"prepare_toy: error: MLflow tracking server {uri} answers but its "
                           "store fails: HTTP 503"), line
    assert f"port {db.port} failed: Connection refused" in line and "database" in line, line
    assert not out.exists()
    assert server.returncode == 1, server.stderr
    line = one_line(server.stderr)
    assert line.startswith(f"team server: the database {db.uri} does not answer (") and \
        "Connection refused" in line, line


def test_a_database_lost_mid_stage_keeps_the_outputs_and_names_the_lost_logging(
        team_server, tiny_images, params, tmp_path):
    from mlflow.tracking import MlflowClient

    uri, db = team_server.mlflow.uri, team_server.db
    files = stage_files(tmp_path / "out")
    p = params({**TINY, "blackbox.epochs": 4, "tracking.enabled": True, "tracking.uri": uri,
                "tracking.timeout_s": 10})
    proc, seen = training(p, tiny_images, files)
    proc.send_signal(signal.SIGSTOP)  # held mid-training while the database goes down
    try:
        db.stop()
    finally:
        proc.send_signal(signal.SIGCONT)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        db.start()
    said = seen + err
    assert proc.returncode == 0, said
    lost = [line for line in said.splitlines() if "warning: tracking lost" in line]
    assert len(lost) == 1 and "Traceback" not in said, said
    assert f"the MLflow store {uri} failed mid-stage (HTTP 503" in lost[0], lost[0]
    assert f"port {db.port} failed: Connection refused" in lost[0], lost[0]
    named = re.search(r"not logged: (metrics from step \d+ on) of run ([0-9a-f]{32}) \(stage "
                      r"train_blackbox\) and everything after \(the run stays unfinished\)",
                      lost[0])
    assert named, lost[0]
    assert all(path.is_file() for path in files.values())
    run_ = MlflowClient(uri).get_run(named.group(2))  # the database is back
    assert run_.info.status == "RUNNING" and run_.data.tags[STAGE_TAG] == "train_blackbox"
