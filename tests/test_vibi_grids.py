"""The explanation grids VIBI and L2X log at every validation (`xai.pipeline.grids`): they change
nothing in training, they are what `render` draws, and the stage logs one per validation."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from tests.test_vibi import PatchReader, position_task, tiny_model, tiny_settings
from tests.test_vibi_stage import VIBI, blackbox, run  # noqa: F401 - `blackbox` is a fixture
from xai.data.prepared import Split, load_dataset
from xai.models.blackbox import load_blackbox, load_probabilities
from xai.models.vibi import explain_split, load_vibi
from xai.pipeline import grids
from xai.pipeline.config import load_config
from xai.train.loop import History
from xai.train.vibi import explanations_state, train
from xai.viz.figures import png_bytes
from xai.viz.render import vibi_grid, vibi_panels

CLASSES = [str(c) for c in range(9)]


pytestmark = pytest.mark.usefixtures("one_thread")


def render_png(model, shown: Split, probs, classes, k, beta, black_box, approximator=None
               ) -> bytes:
    """What `render` draws for these images: the explanations file of them, read by
    `vibi_panels`, drawn by `vibi_grid` (at the grids' layout and resolution)."""
    expl = explain_split(model, shown.x, black_box, approximator=approximator)
    state = explanations_state(model, expl, probs)
    panels = vibi_panels(shown, state, probs, range(len(shown)))
    figure = vibi_grid(panels, classes, k, beta, min(grids.GRID_COLUMNS, len(shown)))
    return png_bytes(figure, grids.GRID_DPI)


def _train(settings, on_validation=None):
    train_set, val_set = position_task(128, 0), position_task(32, 1)
    history = History()
    torch.manual_seed(123)  # the global generators as they are when training starts
    model = train(tiny_model(settings), settings, train_set, val_set, seed=0, history=history,
                  show_progress=False, on_validation=on_validation)
    return model, history, torch.get_rng_state()


def _same_training(a, b):
    (model_a, history_a, rng_a), (model_b, history_b, rng_b) = a, b
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # bit-identical weights
    timing = ("wall_seconds", "images_per_second")
    rows = [[{k: v for k, v in row.items() if k not in timing} for row in h.rows]
            for h in (history_a, history_b)]
    assert rows[0] == rows[1] and len(rows[0]) == 4  # every metric, bit for bit
    assert torch.equal(rng_a, rng_b)


def test_watching_changes_nothing_and_its_last_grid_is_what_render_draws(params):
    """The paper's objective (explainer and approximator both train, batch norm in both): with
    the grid callback the weights, every history metric and the global generator end exactly as
    without it; it ran at step 0 and after each validation; its last grid (of the final model,
    save_best off) is, byte for byte, the one `render` draws for the same images and model."""
    settings = tiny_settings(params, epochs=2, evals_per_epoch=2, warmup_steps=2,
                             save_best=False)  # 4 steps per epoch: validations at 2, 4, 6, 8
    val = position_task(32, 1)
    shown = Split(val.x[:6], val.y[:6].argmax(1))  # true classes; y holds the probabilities
    pictures = []

    def watch(step, model):
        assert model.training  # as training left it
        pictures.append((step, grids.grid_png(model, shown, val.y[:6], CLASSES, settings,
                                              PatchReader())))

    plain, watched = _train(settings), _train(settings, watch)
    _same_training(plain, watched)
    assert [step for step, _ in pictures] == [0, 2, 4, 6, 8]
    assert pictures[0][1] != pictures[-1][1]  # the explanations moved
    model = watched[0]
    assert pictures[-1][1] == render_png(model, shown, val.y[:6], CLASSES, settings.k,
                                         settings.beta, PatchReader())


def test_a_careless_callback_still_changes_nothing(params):
    """One that leaves the model in eval mode (batch norm would stop learning its statistics)
    and draws from the global generator: training restores both around it."""
    settings = tiny_settings(params, epochs=2, evals_per_epoch=2, warmup_steps=2)

    def careless(step, model):
        model.eval()
        torch.rand(7)

    _same_training(_train(settings), _train(settings, careless))


def _grids(uri: str, experiment: str) -> dict[str, list[tuple[int, str]]]:
    """(step, path) of each logged grid (full-size PNG), by stage run id."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    found = {}
    for r in client.search_runs([exp.experiment_id]):
        if r.data.tags.get("xai.stage") is None:
            continue  # the pipeline's parent run
        paths = [a.path for a in client.list_artifacts(r.info.run_id, "images")]
        found[r.info.run_id] = sorted(
            (int(re.search(rf"{grids.GRID_KEY}\+step\+(\d+)\+", p).group(1)), p)
            for p in paths if p.endswith(".png"))
    return found


def test_the_stage_logs_one_grid_per_validation_and_none_at_zero(tiny_images, blackbox,  # noqa: F811
                                                                 params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the sqlite store's artifacts go beside it, under tmp_path
    monkeypatch.setenv("XAI_PIPELINE_ID", "grids")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracked = {**VIBI, "vibi.evals_per_epoch": 4, "vibi.save_best": False, "vibi.precision": "fp32",
               "vibi.grid_images": 3, "tracking.enabled": True, "tracking.uri": uri}
    cfg = load_config(params(tracked))
    files = run("l2x", tmp_path / "params.yaml", tiny_images, blackbox, tmp_path / "on")
    (run_id, logged), = _grids(uri, cfg.tracking.experiment).items()
    plots = files["plots"].read_text().splitlines()
    header = plots[0].split(",")
    steps = [int(float(line.split(",")[header.index("step")])) for line in plots[1:]]
    assert [step for step, _ in logged] == [0, *steps] and steps == [2, 4, 6, 8]
    timings = json.loads(files["timings"].read_text())
    assert timings["grid_seconds"] > 0 and timings["train_seconds"] > 0

    # the last grid is what render draws for the first 3 validation images and the saved model
    data, device = load_dataset(tiny_images), torch.device("cpu")
    probs = load_probabilities(blackbox["probs"])["val"][:3]
    bb = load_blackbox(blackbox["model"], device)
    expected = render_png(load_vibi(files["model"]), Split(data.val.x[:3], data.val.y[:3]), probs,
                          data.classes, cfg.vibi.k, 0.0, bb, approximator=bb)
    path = MlflowClient(uri).download_artifacts(run_id, logged[-1][1], str(tmp_path / "dl"))
    with Image.open(path) as got, Image.open(io.BytesIO(expected)) as want:
        assert got.size == want.size
        assert np.array_equal(np.asarray(got), np.asarray(want))

    monkeypatch.setenv("XAI_PIPELINE_ID", "no-grids")
    off = run("l2x", params({**tracked, "vibi.grid_images": 0}, "off.yaml"), tiny_images,
              blackbox, tmp_path / "off")
    assert json.loads(off["timings"].read_text())["grid_seconds"] == 0
    by_run = _grids(uri, cfg.tracking.experiment)
    assert len(by_run) == 2 and [not steps for steps in by_run.values()].count(True) == 1
