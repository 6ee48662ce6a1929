"""The public API: installable names, VIBI for a user's own model, the example as a test."""

from __future__ import annotations

import doctest
import importlib.util

import pytest
import torch
from torch import nn

import xai
import xai.explain.vibi
from tests.conftest import ROOT
from xai.models.vibi import load_vibi, save_vibi


def test_public_names_are_exported():
    assert set(xai.__all__) >= {"VIBI", "Occlusion", "Lime", "KernelShap"}
    for name in xai.__all__:
        assert getattr(xai, name) is not None


def test_the_module_example_runs():
    assert doctest.testmod(xai.explain.vibi).failed == 0


def test_the_example_explains_a_user_model():
    spec = importlib.util.spec_from_file_location("example",
                                                  ROOT / "examples" / "explain_your_model.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main() > 0.9  # the kept chunks carry the model's decision


def test_save_load_and_a_plain_callable_black_box(tmp_path):
    torch.manual_seed(0)
    linear = nn.Linear(64, 3)

    def blackbox(x: torch.Tensor) -> torch.Tensor:  # not an nn.Module
        return linear(x.flatten(1))

    x = torch.rand(128, 1, 8, 8)
    vibi = xai.VIBI(blackbox, k=2, width_multiplier=0.25, warmup_steps=0)
    with pytest.raises(RuntimeError, match="call fit"):
        vibi.attribute(x)
    vibi.fit(x, epochs=1, show_progress=False)
    maps = vibi.attribute(x[:5])
    assert maps.shape == (5, 1, 8, 8)
    assert torch.allclose(maps.sum((1, 2, 3)), torch.ones(5), atol=1e-5)  # p(z|x) sums to 1
    assert (vibi.top_k(x[:5]).flatten(1).sum(1) == 2 * 16).all()  # 2 chunks of 4 x 4
    vibi.save(tmp_path / "vibi.pt")
    again = xai.VIBI.load(tmp_path / "vibi.pt", blackbox)
    assert torch.equal(again.attribute(x[:5]), maps)
    # one saved format: the pipeline's loader reads the API's file, and the API reads the
    # pipeline's (settings it does not hold are the library defaults)
    pair = load_vibi(tmp_path / "vibi.pt")
    assert pair.spec == vibi.model.spec
    save_vibi(pair, tmp_path / "pipeline.pt", method="vibi", beta=0.5)
    from_pipeline = xai.VIBI.load(tmp_path / "pipeline.pt", blackbox)
    assert from_pipeline.settings["beta"] == 0.5 and from_pipeline.settings["k"] == 2
    assert torch.equal(from_pipeline.attribute(x[:5]), maps)
    # the API's older format (its own kind, the multiplier saved as `width`) still loads
    state = torch.load(tmp_path / "vibi.pt", weights_only=True)
    settings = {("width" if k == "width_multiplier" else k): v
                for k, v in state["settings"].items()}
    torch.save({**state, "kind": "xai.api.vibi", "settings": settings}, tmp_path / "old.pt")
    old = xai.VIBI.load(tmp_path / "old.pt", blackbox)
    assert old.settings == vibi.settings and torch.equal(old.attribute(x[:5]), maps)


def test_the_readme_api_example_runs(tmp_path, monkeypatch):
    """The README's "Python API" block, executed as it stands."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("\n```", start)]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["maps"].shape == scope["x_test"].shape
    assert scope["masks"].flatten(1).sum(1).eq(4 * 16).all()  # k = 4 chunks of 4 x 4 pixels
    table = scope["report"].table["methods"]
    assert set(table) == {"vibi", "occlusion", "random"}
    assert torch.allclose(scope["explanation"], scope["points"] - scope["projection"].projected)
    assert scope["importance"].shape == scope["points"].shape
