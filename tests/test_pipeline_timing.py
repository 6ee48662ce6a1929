"""experiments/pipeline_timing.py: a setting's keys land in params.yaml, and a typo fails first."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, experiment
from xai.errors import ConfigError


def _params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_a_dotted_key_sets_the_nested_param():
    expected = _params()
    expected["vibi"]["k"] = 8
    assert experiment("pipeline_timing").configured(_params(), {"vibi.k": 8}) == expected


def test_a_key_params_yaml_does_not_have_is_refused():
    with pytest.raises(ConfigError, match="vibi.kk"):
        experiment("pipeline_timing").configured(_params(), {"vibi.kk": 64})


def test_the_committed_settings_name_only_existing_keys():
    paths = sorted((ROOT / "experiments").glob("*_setting.json"))
    assert len(paths) >= 12
    for path in paths:
        setting = json.loads(path.read_text())
        experiment("pipeline_timing").configured(_params(), setting["params"])


def test_until_keeps_the_stages_up_to_the_named_one():
    until = experiment("pipeline_timing").stages_until
    assert until(["a", "b", "c"], "b") == ["a", "b"] and until(["a", "b"], None) == ["a", "b"]
    with pytest.raises(ConfigError, match="no such stage; allowed: a, b"):
        until(["a", "b"], "x")


def test_a_workdir_that_exists_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["pipeline_timing.py", str(ROOT / "experiments" /
                                                            "default_setting.json"),
                                     "--data-root", str(tmp_path), "--workdir", str(tmp_path)])
    with pytest.raises(ConfigError, match="--workdir .*exists; name a new folder"):
        experiment("pipeline_timing").main()
    assert list(tmp_path.iterdir()) == []


def test_a_resume_without_a_kept_run_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["pipeline_timing.py", str(ROOT / "experiments" /
                                                               "default_setting.json"),
                                     "--data-root", str(tmp_path), "--resume", str(tmp_path)])
    with pytest.raises(ConfigError, match="--resume .*no kept run there"):
        experiment("pipeline_timing").main()


def test_what_a_resumed_run_keeps_is_every_stage_output():
    dvc_yaml = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    made = experiment("pipeline_timing").dvc_outputs(dvc_yaml)
    assert {"models/blackbox.pt", "metrics/evaluation.json", "plots/judge.csv",
            "figures/evaluation_curves.png"} <= made
    assert not any(path.startswith(("xai/", "stages/")) for path in made)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                          check=True, capture_output=True, text=True).stdout.strip()


def _commit(repo: Path, text: str) -> str:
    (repo / "code.py").write_text(text)
    _git(repo, "add", "-A")
    _git(repo, "commit", "--quiet", "-m", text)
    return _git(repo, "rev-parse", "HEAD")


def test_a_run_resumed_twice_has_the_latest_code_and_names_the_code_it_resumed(tmp_path):
    """A file changed for one resume and changed back for the next must come back: each resume
    starts from the code the kept run last ran, not the code it was first cloned at."""
    source, work = tmp_path / "source", tmp_path / "work"
    source.mkdir()
    _git(source, "init", "--quiet")
    (source / "dvc.yaml").write_text("stages: {}\n")
    first = _commit(source, "first")
    _git(tmp_path, "clone", "--quiet", str(source), str(work))
    update = experiment("pipeline_timing").update_code
    second = _commit(source, "second")
    assert update(work, source) == (first, second) and (work / "code.py").read_text() == "second"
    third = _commit(source, "first")
    assert update(work, source) == (second, third) and (work / "code.py").read_text() == "first"
