"""The DVC pipeline itself, run with the real `dvc` in a temporary copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_params

DVC = str(Path(sys.executable).with_name("dvc"))


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture
def project(tmp_path, folder_archive):
    """A git+DVC copy of the project whose image data set is a tiny folder archive."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "stages", "xai"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name)
    write_params(repo / "params.yaml", {"data.dataset": "folder", "data.root": str(tmp_path),
                                        "data.folder": folder_archive.name,
                                        "data.val_fraction": 0.25})
    run(["git", "init", "-q"], repo)
    run([DVC, "init", "-q"], repo)
    return repo


def test_stage_reruns_only_when_its_params_change(project):
    out = run([DVC, "repro", "prepare", "prepare_toy"], project)
    assert "Running stage 'prepare'" in out and "Running stage 'prepare_toy'" in out
    image_bytes = (project / "data/prepared/images.pt").read_bytes()

    out = run([DVC, "repro", "prepare", "prepare_toy"], project)
    assert "Running stage" not in out

    params = project / "params.yaml"
    params.write_text(params.read_text().replace("n_samples: 1000", "n_samples: 500"))
    out = run([DVC, "repro", "prepare", "prepare_toy"], project)
    assert "Running stage 'prepare_toy'" in out and "Running stage 'prepare'" not in out

    run([DVC, "repro", "--force", "prepare"], project)
    assert (project / "data/prepared/images.pt").read_bytes() == image_bytes
