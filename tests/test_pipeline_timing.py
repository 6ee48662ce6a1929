"""experiments/pipeline_timing.py: stage seconds from DVC's output, and bad runs refused first."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, experiment
from xai.errors import ConfigError


def test_each_stage_lasts_until_the_next_one_starts():
    lines = [(0.5, "Running stage 'prepare':"), (1.0, "> python -m stages.prepare"),
             (4.0, "Stage 'prepare_toy' didn't change, skipping"),
             (6.25, "Running stage 'train_blackbox':"), (7.0, "epoch 1")]
    seconds = experiment("pipeline_timing").stage_seconds(lines, end=10.0)
    assert seconds == {"prepare": 5.8, "train_blackbox": 3.8}


@pytest.mark.parametrize("argv, message", [
    (["--workdir", "{tmp}"], "--workdir .*exists; name a new folder"),
    (["-S", "recipe=cifar10_cpu"], "recipe=cifar10_cpu is made for 3 x 32 x 32 images and "
                                   "data=mnist \\(data.dataset = mnist\\) has 1 x 28 x 28"),
    (["-S", "vibi.kk=3"], "vibi.kk"),
    (["--until", "nope"], "--until nope: no such stage; allowed: raw_data, prepare"),
])
def test_a_bad_run_is_refused_before_any_work(argv, message, tmp_path, monkeypatch):
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    monkeypatch.setattr("sys.argv", ["pipeline_timing.py", *argv])
    clones = lambda: sorted(ROOT.parent.glob("xai-timing-*"))  # noqa: E731
    before = clones()
    with pytest.raises(ConfigError, match=message):
        experiment("pipeline_timing").main()
    assert clones() == before  # no clone was made
    assert list(tmp_path.iterdir()) == []
