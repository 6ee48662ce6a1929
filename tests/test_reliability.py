"""Failure behaviour of a training stage: interrupts, divergence, unreachable tracking."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from stages import train_blackbox
from tests.conftest import ROOT
from tests.test_blackbox import TINY, stage_args, stage_files
from xai.errors import TrackingError, TrainingError
from xai.io import JOURNAL_SUFFIX


def training(params_path: Path, data: Path,
             files: dict[str, Path]) -> tuple[subprocess.Popen, str]:
    """A `train_blackbox` stage on one thread, started and read until its second epoch (well
    inside training); returns the process and what it said on stderr so far."""
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_blackbox",
                             *stage_args(params_path, data, files)], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen, deadline = "", time.monotonic() + 120
    while "epoch 2/" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stderr.read(1)
    return proc, seen


def test_sigterm_mid_training_leaves_no_output(tiny_images, params, tmp_path):
    files = stage_files(tmp_path / "out")
    proc, _ = training(params({**TINY, "blackbox.epochs": 10_000}), tiny_images, files)
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


class HangingBlackBox(nn.Module):
    """A black box whose third call hangs (sleeps a minute) after a SIGINT, like a stuck step;
    a second SIGINT follows half a second into the hang."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            signal.raise_signal(signal.SIGINT)  # the first Ctrl-C: stop at the step boundary
            threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
            time.sleep(60)
        return 30 * F.avg_pool2d(x, 4).flatten(1)


def test_a_second_sigint_stops_a_hung_step_at_once(params):
    from tests.test_vibi import position_task, tiny_model, tiny_settings
    from xai.pipeline.tracking import NullRun
    from xai.train.loop import History
    from xai.train.vibi import train

    settings = tiny_settings(params, objective="blackbox", epochs=2, warmup_steps=0)
    handler = signal.getsignal(signal.SIGINT)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt, match="SIGINT again: stopping now"):
        train(tiny_model(settings), settings, position_task(128, 0), position_task(32, 1),
              seed=0, history=History(NullRun()), show_progress=False,
              blackbox=HangingBlackBox())
    assert time.monotonic() - start < 20
    assert signal.getsignal(signal.SIGINT) is handler  # handlers restored


def _start_mlflow_server(folder):
    """A real `mlflow server` on a free local port, in its own process group (to kill it all)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
           "--default-artifact-root", str(folder / "artifacts")]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    return server, f"http://127.0.0.1:{port}"


def _wait_healthy(uri, timeout_s=180):
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(uri + "/health", timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"mlflow server at {uri} did not start")


@pytest.mark.usefixtures("one_thread")
def test_a_tracking_server_lost_mid_stage_still_gives_the_stage_outputs(tiny_images, params,
                                                                         tmp_path):
    """The MLflow server is SIGKILLed during training: the stage warns once that tracking was
    lost, exits 0 and writes the same outputs as a run without tracking. The reference trains in
    this process on one thread, as the stage's subprocess does (OMP_NUM_THREADS=1): on a CPU
    without native bf16, fp32 results depend on the thread count, so two counts would differ."""
    server, uri = _start_mlflow_server(tmp_path)
    try:
        reference = stage_files(tmp_path / "reference")
        train_blackbox.main(stage_args(params({**TINY, "blackbox.epochs": 2}, name="ref.yaml"),
                                       tiny_images, reference))
        _wait_healthy(uri)
        files = stage_files(tmp_path / "out")
        p = params({**TINY, "blackbox.epochs": 2, "tracking.enabled": True, "tracking.uri": uri,
                    "tracking.timeout_s": 5})
        proc, seen = training(p, tiny_images, files)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        _, err = proc.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
    assert proc.returncode == 0, seen + err
    assert (seen + err).count("warning: tracking lost") == 1, seen + err
    assert "Traceback" not in err
    for name in ("model", "probs", "metrics"):  # (plots and timings hold wall times)
        assert files[name].read_bytes() == reference[name].read_bytes(), name
    assert files["plots"].exists() and files["timings"].exists()


def test_a_stage_start_sweeps_temporary_files_a_killed_stage_left(tmp_path, monkeypatch):
    """After a SIGKILL, `dvc repro` may restore a stage's outputs from its run cache without
    running it; the next stage that starts (raw_data always does) removes what the killed one
    had staged or was writing, resume checkpoints included, and completes a commit it cut short."""
    from xai.pipeline import cli

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  render:\n    cmd: python -m x --checkpoint checkpoints/r.pt --out o\n"
        "    outs:\n      - figures/a.png\n"
        "    metrics:\n      - m.json:\n          cache: false\n")
    (tmp_path / "figures").mkdir()
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "figures" / ".a.png.k2j4_x9q.tmp", tmp_path / ".m.json.0a1b2c3d.tmp",
             tmp_path / "checkpoints" / ".r.pt.x1y2z3w4.tmp"]  # a resume checkpoint's
    mine = tmp_path / "figures" / ".b.png.0a1b2c3d.tmp"  # not an output of any stage
    for path in (*stale, mine):
        path.write_bytes(b"half")
    # killed inside a commit's renames: the journal lists a complete staged file not yet renamed
    staged = tmp_path / "figures" / ".a.png.zz00zz00.tmp"
    staged.write_bytes(b"new")
    (tmp_path / "figures" / f".a.png{JOURNAL_SUFFIX}").write_text(
        json.dumps([[str(staged), str(tmp_path / "figures" / "a.png")]]))
    monkeypatch.chdir(tmp_path)
    ran = []
    cli.run(lambda argv: ran.append(argv), "render")
    assert ran == [None] and not any(p.exists() for p in stale) and mine.exists()
    assert (tmp_path / "figures" / "a.png").read_bytes() == b"new"  # the commit rolled forward
    assert not list(tmp_path.rglob(f"*{JOURNAL_SUFFIX}"))
