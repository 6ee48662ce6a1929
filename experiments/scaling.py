"""How each stage's main step costs more as the images, their size and k grow.

    python experiments/scaling.py experiments/scaling.json [--seconds 1.5]

Runs the benchmark's cases (`xai.pipeline.bench`: the black box's, the invertible network's and
VIBI's training steps and passes, integrated gradients and ROAD's imputation) at the defaults of
params.yaml along three axes, one at a time:
- images: every case's batch x1, x2, x4 (the training batch sizes in params, the fixed batches
  of the inference cases);
- size: square single-channel images of 28, 32, 64 and 128 pixels a side;
- k: VIBI's chunks kept (its training step and its explain pass), 2, 8 and 32.
Records seconds per step and the peak memory each step added, and fits the exponent of each
growth (log seconds against log images, pixels or k); `python tools/docs.py` turns the file into
the scaling table of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.pipeline_timing import configured, cpu_name
from xai.devices import select_device
from xai.pipeline.bench import CASES, matmul_ceiling, run_case

BATCH_KEYS = ("blackbox.batch_size", "vibi.batch_size", "invertible.image.batch_size",
              "invertible.toy.batch_size")
SIDES = (28, 32, 64, 128)
FACTORS = (1, 2, 4)
KS = (2, 8, 32)


def exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x: cost ~ x ** slope."""
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def measure(params: dict, overrides: dict, shape: tuple[int, int, int] | None, scale: int,
            ceilings: dict[str, float], seconds: float, only: str = "") -> dict[str, dict]:
    """Every benchmark case (whose name contains `only`) at one point: seconds per step, images
    per step, peak memory."""
    cfg = configured(json.loads(json.dumps(params)), overrides)
    device = select_device(cfg.device)
    rows = {}
    for build in CASES:
        for case in build(cfg, device, shape=shape, scale=scale):
            if only in case.name:
                r = run_case(case, device, ceilings, seconds)
                rows[case.name.split(" (")[0]] = {
                    "seconds_per_step": r.batch / r.images_per_second, "batch": r.batch,
                    "peak_memory_mb": round(r.peak_memory_mb, 1)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=1.5, help="timing per case and point")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    torch.manual_seed(0)
    device = select_device("auto")
    ceilings = {"fp32": matmul_ceiling(device, torch.float32, 2.0),
                "bf16": matmul_ceiling(device, torch.bfloat16, 2.0)}
    axes: dict[str, dict[str, dict]] = {"images": {}, "size": {}, "k": {}}
    for factor in FACTORS:
        batches = {}
        for key in BATCH_KEYS:
            section = params
            for part in key.split("."):
                section = section[part]
            batches[key] = section * factor
        axes["images"][str(factor)] = measure(params, batches, None, factor, ceilings,
                                              args.seconds)
        print(f"images x{factor} done", file=sys.stderr, flush=True)
    for side in SIDES:
        axes["size"][str(side)] = measure(params, {}, (1, side, side), 1, ceilings, args.seconds)
        print(f"size {side} done", file=sys.stderr, flush=True)
    for k in KS:
        axes["k"][str(k)] = measure(params, {"vibi.k": k}, None, 1, ceilings, args.seconds,
                                    only="vibi")
        print(f"k {k} done", file=sys.stderr, flush=True)
    growth: dict[str, dict[str, float]] = {}
    for axis, points in axes.items():
        xs = {"images": [float(f) for f in points], "size": [float(s) ** 2 for s in points],
              "k": [float(k) for k in points]}[axis]
        for name in next(iter(points.values())):
            ys = [points[p][name]["seconds_per_step"] for p in points]
            growth.setdefault(name, {})[axis] = round(exponent(xs, ys), 2)
    results = {"host": {"cpu": cpu_name(), "cores": os.cpu_count(),
                        "threads": torch.get_num_threads()},
               "ceiling_gflops": ceilings, "axes": axes, "exponents": growth}
    args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
