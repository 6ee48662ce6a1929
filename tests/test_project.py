"""The project's own promises: CI runs the README's test command; queued workers share cores
well; every stage depends on the code it runs."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import ROOT
from xai.pipeline.sharing import BUSY_CORES, busy_cores, wait_policy


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
    assert _wait_policy(tmp_path, {"DVC_ROOT": str(ROOT)}) == "PASSIVE"  # a queue worker's copy
    assert _wait_policy(tmp_path, {"DVC_ROOT": str(ROOT), "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    assert _wait_policy(ROOT, {"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"


def test_a_stage_waits_passively_only_on_cores_others_keep_busy():
    assert wait_policy({}, queued=False, busy=0.1) is None  # idle cores: threads spin
    assert wait_policy({}, queued=False, busy=BUSY_CORES) == "PASSIVE"
    assert wait_policy({}, queued=True, busy=0.0) == "PASSIVE"
    assert wait_policy({"OMP_WAIT_POLICY": "ACTIVE"}, queued=True, busy=2.0) == "ACTIVE"


def test_the_busy_sample_sees_a_spinning_neighbour():
    neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # started and spinning
        assert busy_cores(0.5) >= BUSY_CORES
    finally:
        neighbour.kill()
        neighbour.wait()


PLUMBING = {"xai/pipeline/config.py", "xai/io.py", "xai/pipeline/tracking.py", "xai/pipeline/cli.py",
            "xai/errors.py", "xai/pipeline/paths.py", "xai/pipeline/sharing.py",
            "xai/settings.py", "xai/pipeline/grids.py", "xai/pipeline/serving.py"}
# validation, file and MLflow plumbing (grids: the explanation grids logged to MLflow while VIBI
# trains; serving: the explainer logged, registered and promoted as an MLflow Model): they do not
# shape outputs


def _xai_imports(path: Path) -> set[str]:
    """The xai modules a file imports (also inside functions), as repository paths; a package's
    `__init__.py` only holds its docstring, so importing a package is not a dependency."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("xai"):
            base = node.module.replace(".", "/")
            if (ROOT / base).is_dir():  # `from xai.pipeline import cli`: modules of a package
                found |= {f"{base}/{a.name}.py" for a in node.names
                          if (ROOT / f"{base}/{a.name}.py").is_file()}
            else:
                found.add(base + ".py")
        elif isinstance(node, ast.Import):
            found |= {a.name.replace(".", "/") + ".py" for a in node.names
                      if a.name.startswith("xai.") and (ROOT / (a.name.replace(".", "/") + ".py")).is_file()}
    return found


def test_every_stage_depends_on_the_code_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        script = "stages/" + re.search(r"stages\.(\w+)", stage["cmd"]).group(1) + ".py"
        needed, todo = {script}, [script]
        while todo:
            for module in _xai_imports(ROOT / todo.pop()) - PLUMBING - needed:
                needed.add(module)
                todo.append(module)
        listed = {d for d in stage["deps"] if d.endswith(".py")}
        assert listed == needed, f"{name}: missing {needed - listed}, extra {listed - needed}"


def test_every_param_a_stage_lists_is_in_params_yaml():
    """A renamed key left behind in dvc.yaml stops `dvc repro` ("Parameters ... are missing")."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = []
    for name, stage in stages.items():
        for key in stage.get("params", []):
            if not isinstance(key, str):  # a mapping names another params file
                continue
            node = params
            for part in key.split("."):
                node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
            if node is KeyError:
                missing.append(f"{name}: {key}")
    assert not missing, missing


def test_an_installed_xai_has_every_subpackage():
    """`pip install .` (not only editable) ships every package under xai/."""
    import tomllib

    from setuptools import find_packages

    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    shipped = set(find_packages(ROOT, include=find["find"]["include"]))
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "xai").rglob("__init__.py")}
    assert len(on_disk) > 5 and on_disk <= shipped, on_disk - shipped
