"""DVC re-runs exactly the VIBI entries a parameter change affects."""

from __future__ import annotations

import re

import yaml

from tests.test_blackbox import TINY
from tests.test_pipeline import DVC, project, run  # noqa: F401 - `project` is a fixture
from tests.test_vibi_stage import VIBI
from xai.pipeline.config import set_dotted


def set_params(repo, overrides):
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in overrides.items():
        set_dotted(params, key, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def changed(repo):
    """Stages up to train_vibi that `dvc status` reports as changed (`raw_data`, which re-reads
    the raw files at every repro, always is)."""
    out = run([DVC, "status", "--with-deps", "train_vibi"], repo)
    return set(re.findall(r"^(\w+):", out, flags=re.M)) - {"raw_data"}


def test_beta_reruns_only_vibi_and_k_reruns_both_entries(project):  # noqa: F811
    set_params(project, {**VIBI, **{k: v for k, v in TINY.items() if k != "device"},
                         "blackbox.channels": 2, "vibi.width_multiplier": 0.125})
    out = run([DVC, "repro", "train_vibi"], project)
    assert "Running stage 'train_l2x'" in out and "Running stage 'train_vibi'" in out
    assert changed(project) == set()

    set_params(project, {"vibi.beta": 0.1})
    assert changed(project) == {"train_vibi"}
    set_params(project, {"vibi.beta": 0.01, "vibi.k": 2})
    assert changed(project) == {"train_l2x", "train_vibi"}
