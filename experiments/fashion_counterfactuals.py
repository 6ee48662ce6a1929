"""The image flow's counterfactuals on Fashion-MNIST at the defaults, measured as on MNIST.

    python experiments/fashion_counterfactuals.py --data-root ../shared/datasets \
        > experiments/fashion_counterfactuals.json

Clones this repository's HEAD into a temporary directory, sets `data.dataset: fashion_mnist` (and
`data.root`, `tracking.enabled: false`) in its params.yaml, and runs the commands dvc.yaml gives
the stages `prepare`, `train_blackbox`, `train_invertible`, `train_measurement_models` and
`evaluate_counterfactuals` there, one after the other (not through DVC, so nothing else runs).
Prints one JSON object: the params it changed, the host, each stage's wall seconds and the
metrics of `train_blackbox`, `train_invertible`, `train_measurement_models` and
`evaluate_counterfactuals`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xai.evaluation.counterfactual_measures import markdown as measures_markdown
from xai.pipeline.bench import host


def configured(params: dict, overrides: dict[str, object]) -> dict:
    """`params` with the dotted `overrides` set (the clone's stages validate them: the clone's
    code, not this checkout's, defines the params)."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params

STAGES = ("prepare", "train_blackbox", "train_invertible", "train_measurement_models",
          "evaluate_counterfactuals")
METRICS = {"blackbox": "metrics/blackbox.json", "invertible": "metrics/invertible.json",
           "measurement": "metrics/measurement.json",
           "counterfactuals": "metrics/counterfactuals.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True)
    args = parser.parse_args()
    changed = {"data.dataset": "fashion_mnist", "data.root": str(args.data_root.resolve()),
               "data.download": False, "tracking.enabled": False}
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryDirectory(prefix="xai-fashion-") as tmp:
        work = Path(tmp) / "xai"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(work)], check=True)
        params = configured(yaml.safe_load((work / "params.yaml").read_text()), changed)
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        commands = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
        seconds: dict[str, float] = {}
        for stage in STAGES:
            start = time.perf_counter()
            argv = shlex.split(commands[stage]["cmd"])
            subprocess.run([sys.executable, *argv[1:]], cwd=work, env=env, check=True,
                           stdout=sys.stderr)
            seconds[stage] = round(time.perf_counter() - start, 1)
            print(f"{stage}: {seconds[stage]} s", file=sys.stderr, flush=True)
        metrics = {name: json.loads((work / path).read_text()) for name, path in METRICS.items()}
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True,
                                text=True, check=True).stdout.strip()
    print(json.dumps({"changed": {k: v for k, v in changed.items() if k != "data.root"},
                      "commit": commit, "host": host(),
                      "threads": os.environ.get("OMP_NUM_THREADS"), "stage_seconds": seconds,
                      "metrics": metrics}, indent=1))


def markdown(run: dict) -> str:
    """`run` (this script's output) as the docs' block: the literature's measures on
    Fashion-MNIST at the defaults, with the accuracies of the models they come from."""
    m = run["metrics"]
    return "\n".join([
        f"Fashion-MNIST at the defaults (`experiments/fashion_counterfactuals.py`, commit "
        f"`{run['commit'][:7]}`): black box test accuracy {m['blackbox']['test_accuracy']:.4f}, "
        f"invertible classifier {m['invertible']['image_test_accuracy']:.4f}, oracle "
        f"{m['measurement']['oracle_accuracy']:.4f} on validation images.", "",
        measures_markdown(m["counterfactuals"])])


if __name__ == "__main__":
    main()
