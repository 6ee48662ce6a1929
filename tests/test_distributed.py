"""torchrun with two gloo processes on the CPU trains the same weights as one process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from tests.conftest import ROOT
from tests.test_blackbox import TINY, run_stage, stage_args, stage_files


def test_two_process_ddp_matches_one_process(tiny_images, params, tmp_path):
    # fp32: bf16 autocast (the default where the CPU has native bf16) rounds each shard differently
    p = params({**TINY, "blackbox.precision": "fp32"})
    single = run_stage(p, tiny_images, tmp_path / "single")

    files = stage_files(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stages.train_blackbox", *stage_args(p, tiny_images, files)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = torch.load(single["model"], weights_only=True)["state_dict"]
    two = torch.load(files["model"], weights_only=True)["state_dict"]
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)


def _torchrun(module: str, argv: list[str]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", module, *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_process_ddp_invertible_matches_one_process(params, tmp_path):
    from stages import train_invertible
    from tests.test_train_invertible import TINY as INV_TINY
    from tests.test_train_invertible import stage_argv

    p = params(INV_TINY)
    argv, single = stage_argv(tmp_path / "single", p)
    train_invertible.main(argv)
    argv, ddp = stage_argv(tmp_path / "ddp", p)
    _torchrun("stages.train_invertible", argv)
    for name in ("image-model", "toy-model"):
        one = torch.load(single[name], weights_only=True)["state_dict"]
        two = torch.load(ddp[name], weights_only=True)["state_dict"]
        for key in one:
            torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)


def test_two_process_ddp_vibi_runs_and_only_rank_zero_writes(tiny_images, params, tmp_path):
    """VIBI's nets use BatchNorm, which has no synchronised CPU kernel: under gloo each rank
    normalises with its shard's statistics, so weights are close to, not equal to, one process's
    (the noise is equal: see test_vibi's sharded-draw test). The run must work end to end."""
    import json

    from stages import train_vibi
    from tests.test_vibi_stage import OUTPUTS, VIBI

    p = params({**VIBI, "vibi.warmup_steps": 2, "vibi.jump_start": False})
    bb = run_stage(p, tiny_images, tmp_path / "bb")

    def argv(out):
        files = {k: out / f"l2x_{k}.{ext}" for k, ext in OUTPUTS}
        return ["--params", str(p), "--method", "l2x", "--data", str(tiny_images),
                "--probs", str(bb["probs"]), "--blackbox", str(bb["model"]),
                *[a for k, f in files.items() for a in (f"--{k}", str(f))]], files

    args, single = argv(tmp_path / "single")
    train_vibi.main(args)
    args, ddp = argv(tmp_path / "ddp")
    _torchrun("stages.train_vibi", args)
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == \
        sorted(f.name for k, f in ddp.items() if k != "checkpoint")
    metrics = json.loads(ddp["metrics"].read_text())
    assert 0 <= metrics["approximator_fidelity"] <= 1
    one = torch.load(single["model"], weights_only=True)["state_dict"]
    two = torch.load(ddp["model"], weights_only=True)["state_dict"]
    assert one.keys() == two.keys()


def test_sigint_on_one_rank_stops_both_at_one_step_and_the_checkpoint_resumes(
        tiny_images, params, tmp_path):
    """Ctrl-C reaching only rank 1: both ranks stop after the same step (an all-reduced stop
    flag; neither waits in a collective for the other), rank 0 saves the checkpoint, and the
    re-run continues from that step to the end."""
    import re
    import signal
    import time

    import psutil

    from tests.test_vibi_stage import OUTPUTS, VIBI

    p = params({**VIBI, "vibi.warmup_steps": 2, "vibi.jump_start": False,
                "vibi.l2x_epochs": 12, "vibi.resume": True})
    bb = run_stage(params(TINY, name="bb.yaml"), tiny_images, tmp_path / "bb")
    files = {k: tmp_path / "out" / f"l2x_{k}.{ext}" for k, ext in OUTPUTS}
    argv = ["--params", str(p), "--method", "l2x", "--data", str(tiny_images),
            "--probs", str(bb["probs"]), "--blackbox", str(bb["model"]),
            *[a for k, f in files.items() for a in (f"--{k}", str(f))]]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stages.train_vibi", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    seen, deadline = "", time.monotonic() + 180
    while "epoch 3/" not in seen and time.monotonic() < deadline and proc.poll() is None:
        seen += proc.stderr.read(1)
    workers = {int(w.environ()["RANK"]): w for w in psutil.Process(proc.pid).children(True)
               if "RANK" in w.environ()}
    workers[1].send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = seen + err
    assert proc.returncode != 0
    stopped = re.findall(r"train_vibi: interrupted \(l2x: interrupted at step (\d+)\)", err)
    assert len(stopped) == 2 and stopped[0] == stopped[1], err[-3000:]
    assert "Timeout" not in err and "timed out" not in err
    assert torch.load(files["checkpoint"], weights_only=True)["step"] == int(stopped[0])
    assert not files["metrics"].exists()

    resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume: continuing from step {stopped[0]}" in resumed.stdout + resumed.stderr
    assert files["metrics"].exists() and not files["checkpoint"].exists()
