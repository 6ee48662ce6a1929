"""The project's own promises: CI runs exactly the README's test command."""

from __future__ import annotations

from tests.conftest import ROOT


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line.strip() for line in readme[:10] if line.startswith("    python3 -m venv")]
    assert len(commands) == 2 and commands[0].endswith("dvc repro")
    ci_command = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    assert ci_command == commands[1]
