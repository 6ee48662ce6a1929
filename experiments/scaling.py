"""How each stage's main step costs more as the images, their size and k grow.

    python experiments/scaling.py experiments/scaling.json [--seconds 1.5]

Runs the benchmark's cases (`xai.pipeline.bench`: the black box's, the invertible network's and
VIBI's training steps and passes, integrated gradients and ROAD's imputation) at the defaults of
params.yaml along three axes, one at a time:
- images: every case's batch x1, x2, x4 (the training batch sizes in params, the fixed batches
  of the inference cases);
- size: square single-channel images of 28, 32, 64 and 128 pixels a side;
- k: VIBI's chunks kept (its training step and its explain pass), 2, 8 and 32.
Records seconds and FLOPs per step, then (after every timing) the peak memory one step adds,
and fits the exponent of each growth (log seconds, and log FLOPs, against log images, pixels or
k: where time grows faster than the arithmetic, the step loses efficiency as it grows).
`python tools/docs.py` turns the file into the scaling table of docs/performance.md.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import sys
from operator import attrgetter
from pathlib import Path

import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xai.devices import select_device
from xai.io import save_json
from xai.pipeline.bench import (
    CASES,
    PeakMemory,
    host,
    host_label,
    matmul_ceiling,
    run_case,
)
from xai.pipeline.config import load_config

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


def measure(overrides: dict, shape: tuple[int, int, int] | None, scale: int,
            ceilings: dict[str, float], seconds: float, only: str = "") -> dict[str, dict]:
    """Every benchmark case (whose name contains `only`) at one point: seconds and FLOPs per
    step, images per step; with `seconds` 0, the peak memory one step adds instead."""
    cfg = load_config(ROOT / "params.yaml", overrides)
    device = select_device(cfg.device)
    rows = {}
    for build in CASES:
        for case in build(cfg, device, shape=shape, scale=scale):
            if only not in case.name:
                continue
            name = case.name.split(" (")[0]
            if seconds:
                r = run_case(case, device, ceilings, seconds)
                rows[name] = {"seconds_per_step": r.batch / r.images_per_second,
                              "gflop_per_step": r.mflop_per_image * r.batch / 1e3,
                              "batch": r.batch}
            else:
                case.step()  # state built on the first step (optimiser moments) is not per step
                release_freed_memory()
                with PeakMemory(device) as memory:
                    case.step()
                rows[name] = {"peak_memory_mb": round(memory.peak_mb, 1)}
    return rows


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"))


def return_freed_memory() -> None:
    """Make glibc hand every freed block of 64 KiB or more back to the kernel (by default it keeps
    them for reuse once large blocks have been freed), so the resident set's high-water mark
    counts what a step allocates rather than what earlier steps left behind. Not undone: the
    memory pass runs after every timing."""
    libc = _libc()
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: blocks this large are mapped and unmapped
    libc.mallopt(-1, 0)  # M_TRIM_THRESHOLD: return free heap tops at once


def release_freed_memory() -> None:
    """Hand the free memory glibc still holds back to the kernel (`malloc_trim`), so a step that
    reuses it shows in the resident set."""
    _libc().malloc_trim(0)


def points(batch_sizes: dict[str, int]) -> list[tuple[str, str, dict, tuple | None, int, str]]:
    """(axis, point, param overrides, image shape, inference batch scale, case filter)."""
    out = [("images", str(f), {k: v * f for k, v in batch_sizes.items()}, None, f, "")
           for f in FACTORS]
    out += [("size", str(side), {}, (1, side, side), 1, "") for side in SIDES]
    out += [("k", str(k), {"vibi.k": k}, None, 1, "vibi") for k in KS]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=1.5, help="timing per case and point")
    args = parser.parse_args()
    cfg = load_config(ROOT / "params.yaml")
    batch_sizes = {key: attrgetter(key)(cfg) for key in BATCH_KEYS}
    torch.manual_seed(0)
    device = select_device(cfg.device)
    ceilings = {"fp32": matmul_ceiling(device, torch.float32, 2.0),
                "bf16": matmul_ceiling(device, torch.bfloat16, 2.0)}
    axes: dict[str, dict[str, dict]] = {"images": {}, "size": {}, "k": {}}
    grid = points(batch_sizes)
    for axis, point, overrides, shape, scale, only in tqdm(grid, desc="timing"):
        axes[axis][point] = measure(overrides, shape, scale, ceilings, args.seconds, only)
    return_freed_memory()
    for axis, point, overrides, shape, scale, only in tqdm(grid, desc="memory"):
        for name, row in measure(overrides, shape, scale, ceilings, 0, only).items():
            axes[axis][point][name].update(row)
    growth: dict[str, dict[str, dict[str, float]]] = {}
    for axis, by_point in axes.items():
        xs = [float(p) ** 2 if axis == "size" else float(p) for p in by_point]
        for name in next(iter(by_point.values())):
            fits = growth.setdefault(name, {}).setdefault(axis, {})
            for measured in ("seconds_per_step", "gflop_per_step"):
                ys = [by_point[p][name][measured] for p in by_point]
                if min(ys) > 0:
                    fits[measured.split("_")[0]] = round(exponent(xs, ys), 2)
    results = {"host": host(), "threads": torch.get_num_threads(), "ceiling_gflops": ceilings,
               "axes": axes, "exponents": growth}
    save_json(results, args.out)


def markdown(results: dict) -> str:
    """`results` (this script's output) as the docs' table: seconds per step of every main step
    at the defaults, and the exponents of its time and of its FLOPs as the images per step, the
    pixels per image and VIBI's k grow; a time exponent above 1.1 is marked super-linear."""
    axes, growth = results["axes"], results["exponents"]
    sides = sorted(axes["size"], key=int)  # the file's keys are sorted as text
    lines = [f"{host_label(results['host'])}, {results['threads']} threads. Seconds per step at "
             "the defaults; cost ~ x^e for x = images per step (x1, x2, x4), pixels per image "
             f"({', '.join(f'{s}x{s}' for s in sides)}) and k "
             f"({', '.join(sorted(axes['k'], key=int))}), "
             "each cell the exponent of the time / of the FLOPs (- where the step has none "
             f"counted); peak memory one step adds at {sides[0]} and {sides[-1]} px.", "",
             "| step | seconds/step | e (images) | e (pixels) | e (k) | memory MB |",
             "|---|---|---|---|---|---|"]

    def cell(fit: dict[str, float] | None) -> str:
        if not fit:
            return ""
        time = f"**{fit['seconds']:.2f}**" if fit["seconds"] > 1.1 else f"{fit['seconds']:.2f}"
        flops = f"{fit['gflop']:.2f}" if "gflop" in fit else "-"
        return f"{time} / {flops}"

    base = axes["images"]["1"]
    for name, e in growth.items():
        memory = [axes["size"][s][name]["peak_memory_mb"] for s in (sides[0], sides[-1])]
        lines.append(f"| {name} | {base[name]['seconds_per_step']:.3g} | {cell(e.get('images'))} "
                     f"| {cell(e.get('size'))} | {cell(e.get('k'))} | "
                     f"{memory[0]:.0f} -> {memory[1]:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
