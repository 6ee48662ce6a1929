"""The named steps of VIBI training (`_Training`) compose into exactly what `train` does."""

from __future__ import annotations

import pytest
import torch

from tests.test_vibi import position_task, tiny_model, tiny_settings
from xai.train import vibi as vibi_training
from xai.train.loop import History, StopFlag

pytestmark = pytest.mark.usefixtures("one_thread")


def test_steps_driven_by_hand_give_the_weights_and_rows_of_train(params):
    settings = tiny_settings(params, epochs=2, warmup_steps=1, evals_per_epoch=2)
    train_set, val_set = position_task(96, 0), position_task(32, 1)  # 3 steps per epoch
    history = History()
    reference = vibi_training.train(tiny_model(settings), settings, train_set, val_set, seed=0,
                                    history=history, show_progress=False)

    model, by_hand = tiny_model(settings), History()
    run = vibi_training._Training(model, settings, train_set, val_set, seed=0, history=by_hand,
                                  checkpoint=None, jump_started=False, run_id="", desc="vibi",
                                  show_progress=False, dist=vibi_training.Distributed(),
                                  blackbox=None)
    assert (run.steps_per_epoch, run.total, run.warmup, run.eval_at) == (3, 6, 1, {2, 3})
    model.train()
    for epoch in range(settings.epochs):
        run.run_epoch(epoch, StopFlag())
    assert run.loop.step == 6 and run.finish() is model and not model.training

    timing = ("wall_seconds", "images_per_second")
    assert [{k: v for k, v in r.items() if k not in timing} for r in by_hand.rows] == \
        [{k: v for k, v in r.items() if k not in timing} for r in history.rows]
    assert [r["step"] for r in by_hand.rows] == [2, 3, 5, 6]
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
