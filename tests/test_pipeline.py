"""The DVC pipeline itself, run with the real `dvc` in a temporary copy of the project."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import ROOT, write_params

DVC = str(Path(sys.executable).with_name("dvc"))


def _env() -> dict[str, str]:
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def new_project(repo: Path, archive: Path, overrides: dict | None = None,
                stages: tuple[str, ...] = ()) -> Path:
    """A git+DVC copy of the project at `repo` whose image data set is the folder archive
    `archive`, with params overrides; with `stages`, a pipeline of only those stages."""
    repo.mkdir()
    for name in ("dvc.yaml", "stages", "xai", "blackboxes"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name)
    if stages:
        pipeline = yaml.safe_load((repo / "dvc.yaml").read_text())
        pipeline["stages"] = {k: v for k, v in pipeline["stages"].items() if k in stages}
        (repo / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    write_params(repo / "params.yaml", {"data.dataset": "folder", "data.root": str(archive.parent),
                                        "data.folder": archive.name, "data.val_fraction": 0.25,
                                        **(overrides or {})})
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    return repo


@pytest.fixture
def project(tmp_path, folder_archive):
    """A git+DVC copy of the project whose image data set is a tiny folder archive."""
    return new_project(tmp_path / "repo", folder_archive)


def test_stage_reruns_only_when_its_params_change(project):
    out = run([DVC, "repro", "prepare", "prepare_toy"], project)
    assert "Running stage 'prepare'" in out and "Running stage 'prepare_toy'" in out
    image_bytes = (project / "data/prepared/images.pt").read_bytes()

    out = run([DVC, "repro", "prepare", "prepare_toy"], project)
    assert "Running stage 'prepare'" not in out and "Running stage 'prepare_toy'" not in out

    params = project / "params.yaml"
    params.write_text(params.read_text().replace("n_samples: 1000", "n_samples: 500"))
    out = run([DVC, "repro", "prepare", "prepare_toy"], project)
    assert "Running stage 'prepare_toy'" in out and "Running stage 'prepare'" not in out

    run([DVC, "repro", "--force", "prepare"], project)
    assert (project / "data/prepared/images.pt").read_bytes() == image_bytes


def test_changed_raw_data_reruns_prepare_and_an_equal_copy_does_not(project, tmp_path):
    """raw_data fingerprints the raw files at every repro; prepare depends on the fingerprint,
    which stays as it is when none of the raw files is there."""
    from tests.conftest import image_tree, write_tar

    out = run([DVC, "repro", "prepare"], project)
    assert "Running stage 'raw_data'" in out and "Running stage 'prepare'" in out
    archive = tmp_path / "tiny.tar.gz"
    shutil.copy(archive, tmp_path / "copy")
    archive.unlink()
    shutil.copy(tmp_path / "copy", archive)  # a new copy of the same data set (new timestamps)
    out = run([DVC, "repro", "prepare"], project)
    assert "Running stage 'prepare'" not in out

    files = image_tree()
    files["tree/train/cat/000.png"] = files["tree/train/cat/001.png"]  # one image replaced
    write_tar(archive, files)
    images = (project / "data/prepared/images.pt").read_bytes()
    out = run([DVC, "repro", "prepare"], project)
    assert "Running stage 'prepare'" in out
    assert (project / "data/prepared/images.pt").read_bytes() != images

    record = (project / "data/raw_fingerprint.json").read_bytes()
    archive.unlink()  # no raw data here (a clone that pulled the prepared set): not a change
    out = run([DVC, "repro", "prepare"], project)
    assert "none of the raw files" in out and "Running stage 'prepare'" not in out
    assert (project / "data/raw_fingerprint.json").read_bytes() == record


def _stop_workers(project: Path) -> None:
    """Terminate the queue workers (and `queue start`) still running in `project`."""
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["cwd"] == str(project) and ("queue-worker" in cmdline
                                                 or "queue start" in cmdline):
            with contextlib.suppress(psutil.Error):
                proc.terminate()


def test_two_queued_experiments_log_their_own_runs(project, tmp_path):
    """`dvc queue start -j 2` runs two experiments at once into one MLflow store, unmixed."""
    import time

    from mlflow.tracking import MlflowClient

    params = project / "params.yaml"
    params.write_text(params.read_text().replace("enabled: false", "enabled: true", 1))
    run([DVC, "repro", "prepare_toy"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"], project)
    for n in (300, 400):
        run([DVC, "exp", "run", "--queue", "-S", f"toy.n_samples={n}", "-n", f"n{n}",
             "prepare_toy"], project)
    # The workers outlive `queue start`; with its output in a pipe, waiting for the command
    # would wait for them, and with -j 2 a worker can hang on shutdown after both tasks succeed
    # (dvc-task's concurrent empty-queue shutdown), so the output goes to a file and the
    # deadline below is what bounds the test.
    with (tmp_path / "queue.log").open("w") as log:
        subprocess.run([DVC, "queue", "start", "-j", "2"], cwd=project, env=_env(), stdout=log,
                       stderr=subprocess.STDOUT, check=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            status = run([DVC, "queue", "status"], project)
            if "Running" not in status and "Queued" not in status:
                break
            time.sleep(2)
    finally:
        _stop_workers(project)
    assert status.count("Success") == 2, status

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("xai")
    runs = client.search_runs([exp.experiment_id], "tags.`xai.stage` = 'prepare_toy'")
    by_exp = {r.data.tags.get("dvc.exp_name"): r for r in runs}
    assert set(by_exp) == {None, "n300", "n400"}  # None: the workspace repro
    for n in (300, 400):
        r = by_exp[f"n{n}"]
        assert r.info.status == "FINISHED"
        assert r.data.params["toy.n_samples"] == str(n)
        assert r.data.metrics["train_size"] == n * 0.6
        parent = client.get_run(r.data.tags["mlflow.parentRunId"])
        assert parent.data.tags["xai.pipeline"] == r.data.tags["xai.pipeline"]
        assert parent.info.run_name == f"n{n}"
