"""The train_l2x / train_vibi stage end to end on a tiny prepared set and black box."""

from __future__ import annotations

import json

import pytest
import torch

from stages import train_blackbox, train_vibi
from tests.test_blackbox import TINY
from xai.errors import CheckpointError
from xai.io import load_torch
from xai.models.vibi import load_vibi

VIBI = {**TINY, "vibi.width_multiplier": 0.25, "vibi.k": 1, "vibi.epochs": 1, "vibi.l2x_epochs": 1,
        "vibi.batch_size": 32, "vibi.warmup_steps": 2}
OUTPUTS = (("model", "pt"), ("explanations", "pt"), ("metrics", "json"), ("timings", "json"),
           ("plots", "csv"), ("checkpoint", "pt"))


@pytest.fixture
def blackbox(tiny_images, params, tmp_path):
    out = {k: tmp_path / f"blackbox_{k}.{ext}" for k, ext in
           (("model", "pt"), ("probs", "pt"), ("metrics", "json"), ("timings", "json"),
            ("plots", "csv"))}
    train_blackbox.main(["--params", str(params(TINY)), "--data", str(tiny_images),
                         *[a for k, p in out.items() for a in (f"--{k}", str(p))]])
    return out


def run(method, params_path, data, blackbox, out, init=None):
    files = {k: out / f"{method}_{k}.{ext}" for k, ext in OUTPUTS}
    args = ["--params", str(params_path), "--method", method, "--data", str(data),
            "--probs", str(blackbox["probs"]), "--blackbox", str(blackbox["model"]),
            *[a for k, p in files.items() for a in (f"--{k}", str(p))]]
    train_vibi.main(args + (["--init", str(init)] if init else []))
    return files


def test_l2x_then_vibi_write_every_output(tiny_images, blackbox, params, tmp_path):
    path = params(VIBI)
    l2x = run("l2x", path, tiny_images, blackbox, tmp_path)
    vibi = run("vibi", path, tiny_images, blackbox, tmp_path, init=l2x["model"])
    for files, beta in ((l2x, 0.0), (vibi, 0.01)):
        metrics = json.loads(files["metrics"].read_text())
        assert {"approximator_fidelity", "val_approximator_fidelity", "posthoc_accuracy", "mean_kl",
                "mean_js"} <= set(metrics)
        assert metrics["beta"] == beta and metrics["num_chunks"] == 4  # 8 x 8 in 4 x 4 chunks
        assert 0 <= metrics["approximator_fidelity"] <= 1 and metrics["mean_kl"] >= 0
        timings = json.loads(files["timings"].read_text())
        assert timings["train_seconds"] > 0
        assert load_vibi(files["model"]).spec.k == 1
        expl = load_torch(files["explanations"], kind="xai.vibi_explanations")
        assert expl["chunk_probs"].shape == expl["top_k"].shape == (32, 1, 2, 2)
        assert (expl["top_k"].flatten(1).sum(1) == 1).all()
        torch.testing.assert_close(expl["chunk_probs"].flatten(1).float().sum(1),
                                   torch.ones(32), atol=2e-3, rtol=0)
        assert expl["approximator_probs"].shape == (32, 2)
        assert "val_fidelity" in files["plots"].read_text().splitlines()[0]
        assert not files["checkpoint"].exists()  # deleted once training completed

    with pytest.raises(CheckpointError, match="re-run train_l2x"):
        run("vibi", params({**VIBI, "vibi.width_multiplier": 0.5, "vibi.jump_start": True}), tiny_images,
            blackbox, tmp_path, init=l2x["model"])


def test_a_tampered_black_box_stops_the_stage_before_training(tiny_images, blackbox, params,
                                                               tmp_path, monkeypatch):
    def must_not_train(*_args, **_kwargs):
        raise AssertionError("training started before the black box was checked")

    monkeypatch.setattr(train_vibi, "train", must_not_train)
    good = blackbox["model"].read_bytes()
    blackbox["model"].write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        run("l2x", params(VIBI), tiny_images, blackbox, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
