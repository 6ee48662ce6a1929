"""Presets: params.yaml composed from conf/ as `dvc exp run -S` composes it, every pair checked."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_pipeline import DVC, _env, project, run  # noqa: F401 - `project` is a fixture
from xai.errors import ConfigError
from xai.pipeline.config import IMAGE_SHAPES, Config, flatten, parse_section
from xai.pipeline.presets import choices, compose, compose_text

PRESETS = choices(ROOT)
#: Overrides a preset needs before it can be composed: the `folder` form names the user's images.
NEEDS = {"folder": ["data.folder=my_images.tar.gz"]}


def _yaml(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / f"{name}.yaml").read_text())


def _pair(data: str, recipe: str) -> list[str]:
    return [f"data={data}", f"recipe={recipe}", *NEEDS.get(data, [])]


def _meant_to_work(data: str, recipe: str) -> bool:
    """A recipe made for no particular images fits any data; one made for some fits data whose
    images are those or are known only once read (a folder)."""
    made_for = _yaml(f"recipe/{recipe}")["preset"].get("recipe_images")
    images = _yaml(f"data/{data}")["preset"]["images"]
    return made_for is None or images is None or made_for == images


PAIRS = list(itertools.product(PRESETS["data"], PRESETS["recipe"]))
WORKING = [pair for pair in PAIRS if _meant_to_work(*pair)]
REFUSED = [pair for pair in PAIRS if not _meant_to_work(*pair)]


def test_the_groups_hold_the_presets_the_docs_name():
    assert PRESETS == {"data": ["cifar10", "cifar10_jpeg", "fashion_mnist", "folder", "mnist"],
                       "recipe": ["cifar10_cpu", "cifar10_gpu", "default", "quick"]}
    assert len(WORKING) >= 14 and {("mnist", "cifar10_cpu"), ("fashion_mnist", "cifar10_gpu")
                                   } <= set(REFUSED)


def test_the_defaults_compose_to_the_committed_params_yaml_byte_for_byte():
    """Plain `dvc repro` reads the committed params.yaml; a `dvc exp run -S recipe=default`
    rewrites it to exactly the same bytes, so neither changes a result."""
    assert compose_text([], ROOT) == (ROOT / "params.yaml").read_text()


def test_a_data_preset_declares_the_shape_of_a_torchvision_sets_images():
    for name in PRESETS["data"]:
        _, cfg = compose(_pair(name, "default"), ROOT)
        if cfg.data.dataset in IMAGE_SHAPES:
            assert cfg.preset.images == IMAGE_SHAPES[cfg.data.dataset]


def test_each_preset_names_itself():
    for group, names in PRESETS.items():
        for name in names:
            _, cfg = compose(_pair(name, "default") if group == "data" else
                             _pair("cifar10", name), ROOT)
            assert getattr(cfg.preset, group) == name


@pytest.mark.parametrize("data, recipe", WORKING)
def test_every_pair_meant_to_work_passes_the_pipelines_checker(data, recipe):
    text, cfg = compose(_pair(data, recipe), ROOT)
    assert isinstance(cfg, Config) and cfg.preset.names() == f"data={data} recipe={recipe}"
    assert parse_section(Config, yaml.safe_load(text)) == cfg  # what every stage reads


@pytest.mark.parametrize("data, recipe", REFUSED)
def test_a_recipe_made_for_other_images_is_refused_naming_both_choices(data, recipe):
    refusal = rf"recipe={recipe} is made for .* images and data={data} \(data.dataset = \w+\) has"
    with pytest.raises(ConfigError, match=refusal):
        compose(_pair(data, recipe), ROOT)


def test_a_folders_images_are_checked_once_their_shape_is_known():
    _, cfg = compose(_pair("folder", "cifar10_cpu"), ROOT)  # unknown shape: accepted for now
    cfg.check_recipe((3, 32, 32))
    refusal = (r"recipe=cifar10_cpu is made for 3 x 32 x 32 images and data=folder "
               r"\(data.dataset = folder\) has 1 x 28 x 28")
    with pytest.raises(ConfigError, match=refusal):
        cfg.check_recipe((1, 28, 28))


def test_single_keys_override_on_top_of_the_presets():
    _, cfg = compose(["data=cifar10_jpeg", "recipe=cifar10_cpu", "vibi.beta=0.01",
                      "data.root=elsewhere"], ROOT)
    assert (cfg.vibi.beta, cfg.vibi.k, cfg.data.root, cfg.data.folder) == (
        0.01, 64, "elsewhere", "cifar10-jpeg.tar.gz")


def test_the_hour_command_composes_the_committed_cifar10_records_params():
    """`dvc exp run -S data=cifar10_jpeg -S recipe=cifar10_cpu -S data.root=...` gives every
    param the committed CIFAR-10 record ran with (the keys added since aside: presets, subsets)."""
    record = json.loads((ROOT / "experiments" / "cifar10_cpu_pipeline.json").read_text())
    root = record["params"]["data"]["root"]
    text, _ = compose(["data=cifar10_jpeg", "recipe=cifar10_cpu", f"data.root={root}"], ROOT)
    composed, ran = flatten(yaml.safe_load(text)), flatten(record["params"])
    assert {k: composed[k] for k in ran} == ran


def test_the_gpu_recipe_is_the_cpu_recipe_with_gpu_budgets():
    _, cpu = compose(_pair("cifar10", "cifar10_cpu"), ROOT)
    _, gpu = compose(_pair("cifar10", "cifar10_gpu"), ROOT)
    assert (gpu.device, gpu.blackbox, gpu.judge) == ("cuda", cpu.blackbox, cpu.judge)
    assert gpu.vibi.epochs > cpu.vibi.epochs and gpu.evaluate.num_images > cpu.evaluate.num_images


@pytest.mark.parametrize("override, message", [
    ("recipe=nope", r"Could not find 'recipe/nope'; allowed recipe presets: cifar10_cpu, "
                    r"cifar10_gpu, default, quick"),
    ("data=nope", r"allowed data presets: cifar10, cifar10_jpeg"),
    ("vibi.kk=3", r"Could not override 'vibi.kk'"),
    ("vibi.k=300", r"vibi.k = 300 is out of range.*\(composed from data=mnist recipe=default\)"),
])
def test_a_bad_override_is_refused_in_one_line_naming_it(override, message):
    with pytest.raises(ConfigError, match=message) as caught:
        compose([override], ROOT)
    assert "\n" not in str(caught.value)


def test_the_quick_recipe_keeps_subsets_of_the_data_and_changes_no_model():
    _, quick = compose(["recipe=quick"], ROOT)
    _, default = compose([], ROOT)
    assert (quick.data.train_images, quick.data.test_images) == (2000, 300)
    assert (quick.blackbox.arch, quick.vibi.explainer_type, quick.vibi.k) == (
        default.blackbox.arch, default.vibi.explainer_type, default.vibi.k)


def test_presets_module_writes_nothing_when_it_refuses(tmp_path):
    from xai.pipeline.presets import main

    out = tmp_path / "params.yaml"
    with pytest.raises(SystemExit):
        main(["recipe=cifar10_cpu", "--out", str(out)])
    assert not out.exists()
    main(["data=cifar10_jpeg", "recipe=cifar10_cpu", "--out", str(out)])
    assert re.search(r"^  recipe: cifar10_cpu$", out.read_text(), flags=re.M)


def test_dvc_exp_run_composes_presets_and_refuses_a_misfit_before_any_work(project):  # noqa: F811
    """The real `dvc exp run -S`, with Hydra composition on as the project's .dvc/config has it:
    a refused pair stops in the first stage, before any data is read; a working pair with a
    key on top lands in params.yaml and is listed by `dvc exp show`."""
    shutil.copytree(ROOT / "conf", project / "conf")
    run([DVC, "config", "hydra.enabled", "true"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], project)
    data = yaml.safe_load((project / "params.yaml").read_text())["data"]
    on_tiny = ["-S", f"data.root={data['root']}", "-S", f"data.folder={data['folder']}",
               "-S", "data.val_fraction=0.25", "-S", "tracking.enabled=false"]

    refused = subprocess.run([DVC, "exp", "run", "-S", "data=mnist", "-S", "recipe=cifar10_gpu",
                              *on_tiny, "prepare"], cwd=project, env=_env(), capture_output=True,
                             text=True)
    assert refused.returncode != 0
    assert ("raw_data: error: recipe=cifar10_gpu is made for 3 x 32 x 32 images and data=mnist "
            "(data.dataset = mnist) has 1 x 28 x 28 images") in refused.stderr + refused.stdout
    assert not (project / "data" / "raw_fingerprint.json").exists()

    run([DVC, "exp", "run", "-S", "data=folder", "-S", "recipe=quick", "-S", "vibi.beta=0.5",
         *on_tiny, "prepare"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert (params["preset"]["data"], params["preset"]["recipe"], params["vibi"]["beta"],
            params["data"]["train_images"]) == ("folder", "quick", 0.5, 2000)
    assert (project / "data" / "prepared" / "images.pt").is_file()
    shown = json.loads(run([DVC, "exp", "show", "--json"], project))
    assert any(exp.get("name") for row in shown for exp in (row.get("experiments") or []))

    run([DVC, "exp", "run", "--no-hydra", "-S", "vibi.beta=0.7", "prepare"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())  # set on top, not recomposed
    assert (params["preset"]["recipe"], params["vibi"]["beta"]) == ("quick", 0.7)


def test_the_presets_page_names_every_preset():
    page = (ROOT / "docs" / "presets.md").read_text()
    for group, names in PRESETS.items():
        for name in names:
            assert f"| `{group}` | `{name}`" in page, (group, name)
