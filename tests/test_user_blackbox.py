"""Your own black box (`blackbox.source`): a TorchScript or torch.export file replaces training, and
every later stage explains it unchanged."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from torch import nn

from stages import train_judge
from tests.test_blackbox import TINY, run_stage, stage_files
from tests.test_pipeline import DVC, project, run  # noqa: F401 - `project` is a fixture
from tests.test_train_invertible import TINY as TINY_INVERTIBLE
from tests.test_vibi_stage import VIBI
from xai.data.prepared import load_dataset
from xai.errors import ConfigError
from xai.models.blackbox import UserModel, load_blackbox, load_probabilities
from xai.pipeline.config import load_config, set_dotted
from xai.tensors import to_unit


class HalfBrightness(nn.Module):
    """Logits (left-half mean, right-half mean): right for the tiny separable set by design."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return 10 * torch.stack([x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))], 1)


class SmallNet(nn.Module):
    """A tiny trainable-looking network with parameters, for any C x H x W and class count."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def torchscript(model: nn.Module, path):
    torch.jit.save(torch.jit.script(model), str(path))
    return path


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_the_users_model_is_the_black_box(fmt, tiny_images, params, tmp_path):
    model = HalfBrightness()
    if fmt == "torchscript":
        path = torchscript(model, tmp_path / "user.pt")
    else:
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(model, (torch.rand(4, 1, 8, 8),),
                                      dynamic_shapes={"x": {0: batch}})
        path = tmp_path / "user.pt2"
        torch.export.save(program, str(path))
    files = run_stage(params({**TINY, "blackbox.source": str(path)}), tiny_images, tmp_path / "o")

    data = load_dataset(tiny_images)
    loaded = load_blackbox(files["model"])
    assert isinstance(loaded, UserModel) and loaded.format == fmt
    assert loaded.architecture.num_classes == 2  # the judge's architecture
    x = to_unit(data.test.x)
    assert torch.allclose(loaded(x), model(x))
    probs = load_probabilities(files["probs"])
    for split in ("train", "val", "test"):
        expected = model(to_unit(getattr(data, split).x)).softmax(1)
        assert torch.allclose(probs[split], expected, atol=1e-6)
    metrics = json.loads(files["metrics"].read_text())
    assert metrics["test_accuracy"] == 1.0 and metrics["parameters"] == 0


def test_a_missing_or_foreign_file_is_refused_naming_key_and_path(tiny_images, params,
                                                                   tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ConfigError, match=rf"blackbox.source = '{missing}': no such file"):
        run_stage(params({**TINY, "blackbox.source": str(missing)}), tiny_images, tmp_path / "a")
    foreign = tmp_path / "weights.pt"
    torch.save(SmallNet(1, 2).state_dict(), foreign)  # a state dict, not a program
    with pytest.raises(ConfigError, match=r"blackbox.source = .*weights.pt' is not a TorchScript"):
        run_stage(params({**TINY, "blackbox.source": str(foreign)}), tiny_images, tmp_path / "b")
    with pytest.raises(ConfigError, match="blackbox.source = 'model.onnx' is not allowed"):
        load_config(params({"blackbox.source": "model.onnx"}))


def test_output_shape_is_checked_against_the_classes(tiny_images, params, tmp_path):
    path = torchscript(SmallNet(1, 3), tmp_path / "three.pt")  # the data has 2 classes
    with pytest.raises(ConfigError, match=r"returns \(2, 3\) .* 2 classes"):
        run_stage(params({**TINY, "blackbox.source": str(path)}), tiny_images, tmp_path / "o")


def test_the_judge_trains_from_scratch_for_the_users_model(tiny_images, params, tmp_path):
    path = torchscript(SmallNet(1, 2), tmp_path / "user.pt")
    p = params({**TINY, "blackbox.source": str(path), "judge.epochs": 1, "judge.batch_size": 64})
    files = run_stage(p, tiny_images, tmp_path / "o")
    out = tmp_path / "judge"
    train_judge.main(["--params", str(p), "--data", str(tiny_images), "--probs",
                      str(files["probs"]), "--blackbox", str(files["model"]),
                      *[a for k, v in stage_files(out).items() if k != "probs"
                        for a in (f"--{k}", str(v))]])
    assert "test_agreement_k1" in json.loads((out / "metrics.json").read_text())


def test_dvc_repro_runs_every_stage_on_the_users_torchscript_model(project):  # noqa: F811
    """The whole pipeline, with the black box a TorchScript file under blackboxes/ (tiny data)."""
    (project / "blackboxes").mkdir(exist_ok=True)
    torchscript(SmallNet(3, 3), project / "blackboxes" / "mine.pt")
    params = yaml.safe_load((project / "params.yaml").read_text())
    overrides = {**VIBI, **TINY_INVERTIBLE, "device": "cpu",
                 "blackbox.source": "blackboxes/mine.pt",
                 "judge.epochs": 1, "judge.batch_size": 8, "evaluate.num_images": 6,
                 "evaluate.budgets": [1, 2], "evaluate.curve_points": 3, "evaluate.ig_steps": 2,
                 "evaluate.robustness_images": 3, "evaluate.perturbations": 2,
                 "evaluate.bootstrap": 50, "evaluate.lime_samples": 10,
                 "evaluate.smoothgrad_samples": 2, "evaluate.shap_samples": 2,
                 "evaluate.encoding_folds": 2, "evaluate.batch_size": 16,
                 "render.vibi_images": 3, "render.counterfactual_images": 2,
                 "render.counterfactual_target": None, "render.toy_points": 2}
    for key, value in overrides.items():
        set_dotted(params, key, value)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run([DVC, "repro"], project)
    stages = set(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    assert set(re.findall(r"Running stage '(\w+)'", out)) == stages
    evaluation = json.loads((project / "metrics/evaluation.json").read_text())
    assert evaluation["methods"]["saliency"]["explains"] == "blackbox"
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train_blackbox"]
    assert "blackboxes" in {d["path"] for d in lock["deps"]}

    torchscript(SmallNet(3, 3), project / "blackboxes" / "mine.pt")  # another model, same path
    status = run([DVC, "status"], project)
    assert "train_blackbox" in status
