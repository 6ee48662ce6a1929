"""Counterfactuals of the trained image flow by margin and direction, on validation images.

    python experiments/counterfactual_sweep.py > experiments/counterfactual_sweep.jsonl

Needs `dvc repro evaluate_counterfactuals` first (the prepared data, the black box and the image
flow; `--data`, `--invertible`, `--blackbox` and `--params` point elsewhere). For every direction
(`invertible.counterfactual.direction`: between the class centres of the training images, or
along the boundary's normal) and every margin, the first `--images` validation images (never
test: the sweep is what chooses the defaults) are crossed to their runner-up class and measured
as `evaluate_counterfactuals` measures the test set: validity (the black box), the out-of-range
share, L1, and bits/dim minus the real images' (paired), each with its 95 % bootstrap interval
over images. One JSON line per (direction, margin) goes to stdout, with the flow's training
settings.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xai.data.prepared import Split, load_dataset
from xai.devices import select_device
from xai.evaluation.counterfactuals import guide_for, per_image_quality
from xai.evaluation.uncertainty import (
    Interval,
    bootstrap,
    paired_difference,
    resample_indices,
)
from xai.models.blackbox import load_blackbox
from xai.models.invertible import IMAGE_KIND, load_classifier
from xai.pipeline.config import load_config

RESAMPLES = 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/prepared/images.pt")
    parser.add_argument("--invertible", default="models/invertible_image.pt")
    parser.add_argument("--blackbox", default="models/blackbox.pt")
    parser.add_argument("--margins", type=float, nargs="+", default=[5, 10, 15, 20, 30])
    parser.add_argument("--directions", nargs="+", default=["class_centres", "normal"],
                        choices=["class_centres", "normal", "prototype"])
    parser.add_argument("--images", type=int, default=5000, help="first N validation images")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    cf = cfg.invertible.counterfactual
    device = select_device(cfg.device)
    data = load_dataset(args.data, device)
    n = min(args.images, len(data.val))
    if n == 0:
        raise SystemExit(f"{args.data} has no validation images (data.val_fraction is 0)")
    images = Split(data.val.x[:n], data.val.y[:n])
    model = load_classifier(args.invertible, IMAGE_KIND, device)
    blackbox = load_blackbox(args.blackbox, device)
    indices = resample_indices(n, RESAMPLES, cfg.seed)
    for direction in args.directions:
        guide = guide_for(replace(cf, direction=direction), model, data.train, data.num_classes)
        for margin in args.margins:
            generator = torch.Generator(device=device).manual_seed(cfg.seed)
            per = per_image_quality(model, blackbox, images, margin, cf.posthoc_k,
                                    cf.posthoc_chunk, cf.batch_size, generator, guide,
                                    posthoc=False)
            line = {"direction": direction, "margin": margin, "images": n,
                    "dataset": data.name, "flow": asdict(cfg.invertible.image)}
            for key in ("validity", "out_of_range", "l1"):
                ci = bootstrap(per[key], indices)
                line[key] = [ci.mean, ci.low, ci.high]
            gap = paired_difference(per["bits_per_dim"], per["test_bits_per_dim"], indices)
            line["bits_per_dim_gap"] = [gap.mean, gap.low, gap.high]
            print(json.dumps(line), flush=True)


def markdown(runs: list[dict]) -> str:
    """`runs` (this script's JSON lines) as the docs' table: the counterfactuals by direction and
    margin on validation images, each measure with its 95 % interval."""
    lines = ["| direction | margin | validity (black box) | pixels out of range | bits/dim minus "
             "the real images' | L1 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['direction']} | {r['margin']:g} | {Interval(*r['validity']).text()} | "
              f"{Interval(*r['out_of_range']).text('.4f')} | "
              f"{Interval(*r['bits_per_dim_gap']).text('+.2f')} | "
              f"{Interval(*r['l1']).text('.1f')} |"
              for r in runs]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
