"""The project's own promises: CI runs the README's test command; queued workers share cores well."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line.strip() for line in readme[:10] if line.startswith("    python3 -m venv")]
    assert len(commands) == 2 and commands[0].endswith("dvc repro")
    ci_command = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci_command == commands[1]


def _wait_policy(cwd, env: dict[str, str]) -> str:
    """OMP_WAIT_POLICY as a stage script sees it, started in `cwd` with `env` added."""
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_ROOT", "OMP_WAIT_POLICY")} | env
    env["PYTHONPATH"] = str(ROOT)
    code = "import stages, os; print(os.environ.get('OMP_WAIT_POLICY', 'unset'))"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_queued_workers_wait_passively_unless_the_user_chose(tmp_path):
    assert _wait_policy(ROOT, {}) == "unset"
    assert _wait_policy(ROOT, {"DVC_ROOT": str(ROOT)}) == "unset"  # dvc repro / exp run in place
    assert _wait_policy(tmp_path, {"DVC_ROOT": str(ROOT)}) == "PASSIVE"  # a queue worker's copy
    assert _wait_policy(tmp_path, {"DVC_ROOT": str(ROOT), "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
