"""torchrun with two gloo processes on the CPU trains the same weights as one process."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from tests.conftest import ROOT
from tests.test_blackbox import TINY, run_stage


def test_two_process_ddp_matches_one_process(tiny_images, params, tmp_path):
    p = params(TINY)
    single = run_stage(p, tiny_images, tmp_path / "single")

    out = tmp_path / "ddp"
    files = {k: out / f"{k}.{ext}" for k, ext in
             (("model", "pt"), ("probs", "pt"), ("metrics", "json"), ("plots", "csv"))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "stages.train_blackbox", "--params", str(p), "--data", str(tiny_images),
           *[a for k, f in files.items() for a in (f"--{k}", str(f))]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = torch.load(single["model"], weights_only=True)["state_dict"]
    two = torch.load(files["model"], weights_only=True)["state_dict"]
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4)
