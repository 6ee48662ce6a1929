"""Failure behaviour of a training stage: interrupts, divergence, unreachable tracking."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from stages import train_blackbox
from tests.conftest import ROOT
from tests.test_blackbox import TINY, stage_args, stage_files
from xai.errors import TrackingError, TrainingError


def test_sigterm_mid_training_leaves_no_output(tiny_images, params, tmp_path):
    files = stage_files(tmp_path / "out")
    p = params({**TINY, "blackbox.epochs": 10_000})
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_blackbox",
                             *stage_args(p, tiny_images, files)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    seen = ""
    while "epoch 2/" not in seen and time.monotonic() < deadline:  # well inside training
        seen += proc.stderr.read(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_non_finite_loss_stops_with_a_clear_error(tiny_images, params, tmp_path):
    files = stage_files(tmp_path / "out")
    p = params({**TINY, "blackbox.optimizer": "sgd", "blackbox.lr": 1e12})
    with pytest.raises(TrainingError, match=r"train_blackbox: non-finite loss .* epoch 1, step \d+"):
        train_blackbox.main(stage_args(p, tiny_images, files))
    assert not any(f.exists() for f in files.values())


def test_unreachable_tracking_server_fails_the_stage_before_work(tiny_images, params, tmp_path):
    files = stage_files(tmp_path / "out")
    p = params({**TINY, "tracking.enabled": True, "tracking.uri": "http://127.0.0.1:9",
                "tracking.timeout_s": 5})
    start = time.monotonic()
    with pytest.raises(TrackingError, match="127.0.0.1:9"):
        train_blackbox.main(stage_args(p, tiny_images, files))
    assert time.monotonic() - start < 30
    assert not any(f.exists() for f in files.values())


def test_bad_param_exits_2_with_one_line_and_writes_nothing(tiny_images, params, tmp_path):
    files = stage_files(tmp_path / "out")
    p = params({**TINY, "vibi.beta": -1})
    proc = subprocess.run([sys.executable, "-m", "stages.train_blackbox",
                           *stage_args(p, tiny_images, files)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "train_blackbox: error: vibi.beta = -1 is out of range; allowed: >= 0"]
    assert not (tmp_path / "out").exists()
