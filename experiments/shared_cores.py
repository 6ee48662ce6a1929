"""The `evaluate` stage alone on the cores, and beside a busy neighbour, timed.

    python experiments/shared_cores.py experiments/shared_cores.json --label after \
        --conditions alone busy

Runs the command dvc.yaml gives `evaluate`, with this checkout's inputs (data/, models/,
timings/ of the committed pipeline) but its outputs in a scratch folder, once per condition:
`alone` (nothing else running) or `busy` (beside one 2-thread torch job multiplying matrices in
a loop, as on a laptop doing something else). `--code DIR` runs another checkout's `stages` and
`xai` (for example a worktree of the commit before a change, labelled `before`); `--env K=V`
sets a variable for the stage (e.g. `OMP_WAIT_POLICY=ACTIVE`). Each run's wall seconds, the
stage's own `evaluate_seconds` and its phases' seconds (summed over the methods) are added to the
results file under the label, with the host.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xai.io import write_bytes
from xai.pipeline.bench import host

NEIGHBOUR = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\n"
             "while True:\n    a = (a @ a).tanh_()\n")


def evaluate_once(code: Path, env: dict[str, str], busy: bool) -> dict:
    """One run of the evaluate stage in a scratch folder: its wall and reported seconds, and the
    seconds of each phase (attribution, curves, ...) summed over the methods."""
    cmd = shlex.split(yaml.safe_load((ROOT / "dvc.yaml").read_text())
                      ["stages"]["evaluate"]["cmd"])
    with tempfile.TemporaryDirectory(prefix="xai-shared-") as tmp:
        work = Path(tmp)
        for name in ("data", "models"):
            (work / name).symlink_to(ROOT / name)
        shutil.copytree(ROOT / "timings", work / "timings")
        shutil.copy(ROOT / "params.yaml", work / "params.yaml")
        for name in ("metrics", "outputs", "figures"):
            (work / name).mkdir()
        run_env = {**os.environ, **env, "PYTHONPATH": str(code),
                   "MLFLOW_DISABLE_TELEMETRY": "true"}
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) if busy else None
        try:
            time.sleep(3 if busy else 0)  # the neighbour is multiplying before the stage starts
            start = time.perf_counter()
            subprocess.run([sys.executable, *cmd[1:]], cwd=work, env=run_env, check=True,
                           stdout=sys.stderr)
            wall = time.perf_counter() - start
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        timings = json.loads((work / "timings/evaluate.json").read_text())
    phases: dict[str, float] = {}
    for method in timings["method_seconds"].values():
        for phase, seconds in method.items():
            phases[phase] = round(phases.get(phase, 0.0) + seconds, 2)
    return {"wall_seconds": round(wall, 1), "evaluate_seconds": timings["evaluate_seconds"],
            "phase_seconds": phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="results JSON (runs are added to it)")
    parser.add_argument("--label", required=True, help="what the code is (before, after, ...)")
    parser.add_argument("--conditions", nargs="+", choices=("alone", "busy"),
                        default=["alone", "busy"])
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose code runs")
    parser.add_argument("--env", nargs="*", default=[], metavar="K=V")
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    results = json.loads(args.out.read_text()) if args.out.exists() else {
        "host": host(), "runs": {}}
    for condition in args.conditions:
        run = evaluate_once(args.code.resolve(), env, condition == "busy")
        print(f"{args.label} {condition}: {run}", file=sys.stderr, flush=True)
        results["runs"].setdefault(args.label, {})[condition] = {**run, "env": env}
        write_bytes(args.out, (json.dumps(results, indent=1) + "\n").encode())  # atomically


def markdown(results: dict) -> str:
    """`results` (this script's output) as the docs' table: the evaluate stage's seconds alone
    and beside a busy 2-thread torch job, per code version."""
    lines = [f"{results['host']['cpu']}, {results['host']['cores']} cores; seconds the stage "
             "reports (`evaluate_seconds`):", "",
             "| code | alone | beside a busy 2-thread job | ratio |", "|---|---|---|---|"]
    for label, runs in results["runs"].items():
        alone, busy = (runs.get(c, {}).get("evaluate_seconds") for c in ("alone", "busy"))
        ratio = f"{busy / alone:.2f}x" if alone and busy else "-"
        env = " ".join(f"`{k}={v}`" for k, v in next(iter(runs.values()))["env"].items())
        lines.append(f"| {label}{' ' + env if env else ''} | {alone or '-'} | {busy or '-'} | "
                     f"{ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
