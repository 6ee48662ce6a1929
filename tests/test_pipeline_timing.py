"""experiments/pipeline_timing.py: a setting's keys land in params.yaml, and a typo fails first."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from xai.pipeline.readme import ROOT


def _module():
    spec = importlib.util.spec_from_file_location("pipeline_timing",
                                                  ROOT / "experiments" / "pipeline_timing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_dotted_key_sets_the_nested_param():
    params = {"vibi": {"k": 4, "lr": 0.001}, "seed": 0}
    _module().set_key(params, "vibi.k", 64)
    assert params == {"vibi": {"k": 64, "lr": 0.001}, "seed": 0}


def test_a_key_params_yaml_does_not_have_is_refused():
    with pytest.raises(KeyError, match="vibi.kk"):
        _module().set_key({"vibi": {"k": 4}}, "vibi.kk", 64)


def test_the_committed_cifar_setting_names_only_existing_keys():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    setting = json.loads((ROOT / "experiments" / "cifar_cpu_setting.json").read_text())
    for key, value in setting["params"].items():
        _module().set_key(params, key, value)
