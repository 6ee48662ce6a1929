"""Probes of a CIFAR-10 run (issue 28): what test-time augmentation adds to the black box, and how
the judge's agreement depends on its learning rate and epochs.

    python experiments/cifar_probes.py --workspace DIR --judges lr=0.0003,epochs=5 epochs=10 \
        > experiments/cifar_probes.json

`DIR` is a checkout whose params.yaml holds a CIFAR-10 setting (for example
`experiments/cifar_airbench_setting.json`'s keys) and in which `dvc repro train_judge` has run.
Measures on the test set, with 95 % bootstrap intervals over images:

- the black box's accuracy alone, averaged over its mirror image, and over airbench's six views
  (the image and its mirror, and both shifted by one pixel up-left and down-right, reflect-padded;
  the shifted views weigh half), each as one model would answer;
- the judge's agreement with the black box on random subsets of `--budgets` pixels (0-filled,
  the evaluation's fill): the workspace's judge, and one judge per `--judges` variant trained as
  `train_judge` trains it: the workspace's `judge` params with the variant's KEY=VALUE,... set
  (`epochs=10`, `budget_scale=log,min_share=0.015625`), checked as params.yaml is.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xai.data.prepared import load_dataset
from xai.devices import use_bf16
from xai.evaluation.uncertainty import bootstrap, resample_indices
from xai.models.blackbox import load_blackbox, load_probabilities
from xai.models.judge import Judge, agreement, load_judge
from xai.pipeline.bench import host, key_value
from xai.pipeline.config import load_config, parse_section
from xai.tensors import predict, to_unit
from xai.train.judge import JudgeConfig, train_judge
from xai.train.loop import History, seed_everything

RESAMPLES = 1000


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """`x` (float) moved by (dy, dx) pixels, the edge reflected in."""
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[-2:]
    return padded[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


def tta_logits(model: torch.nn.Module, x: torch.Tensor, views: str, amp: bool) -> torch.Tensor:
    """Mean logits over the views: "none", "mirror" or "airbench" (mirror and +-1 px shifts)."""
    plain = predict(model, x, amp=amp)
    if views == "none":
        return plain
    mirror = (plain + predict(model, x.flip(3), amp=amp)) / 2
    if views == "mirror":
        return mirror
    moved = [predict(model, v, amp=amp) for s in (-1, 1)
             for v in (shifted(x, s, s), shifted(x, s, s).flip(3))]
    return mirror / 2 + torch.stack(moved).mean(0) / 2


def _interval(values: torch.Tensor, indices: torch.Tensor) -> list[float]:
    ci = bootstrap(values.float(), indices)
    return [ci.mean, ci.low, ci.high]


def _overrides(text: str) -> dict[str, object]:
    """`KEY=VALUE,...` -> {KEY: VALUE} (values read as YAML: numbers, words, booleans)."""
    return dict(key_value(item) for item in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--judges", type=_overrides, nargs="*", default=[],
                        metavar="KEY=VALUE,...")
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 256, 512, 1024])
    args = parser.parse_args()
    ws = args.workspace
    cfg = load_config(ws / "params.yaml")
    device = torch.device("cpu")
    data = load_dataset(ws / "data/prepared/images.pt")
    blackbox = load_blackbox(ws / "models/blackbox.pt").eval()
    amp = use_bf16(cfg.evaluate.precision, device)
    x, y = to_unit(data.test.x), data.test.y
    indices = resample_indices(len(x), RESAMPLES, cfg.seed)
    with torch.inference_mode():
        accuracy = {views: _interval(tta_logits(blackbox, x, views, amp).argmax(1) == y, indices)
                    for views in ("none", "mirror", "airbench")}
        reference = predict(blackbox, x, amp=amp).argmax(1)

    def agreements(judge: Judge) -> dict[str, list[float]]:
        return {f"k{b}": _interval(agreement(judge, data.test.x, reference,
                                             torch.Generator().manual_seed(cfg.seed + b), b,
                                             amp=amp), indices)
                for b in args.budgets}

    run_judge = load_judge(ws / "models/judge.pt", mirror=cfg.judge.mirror)
    mirrored = ", mirrored" if cfg.judge.mirror else ""
    judges = {f"the run's (lr {cfg.judge.lr:g}, {cfg.judge.epochs} epochs{mirrored})":
              agreements(run_judge)}
    probs = load_probabilities(ws / "models/blackbox_probs.pt")
    for overrides in args.judges:
        settings = parse_section(JudgeConfig, {**asdict(cfg.judge), **overrides}, "judge")
        generator = seed_everything(cfg.seed, device)
        judge = Judge(blackbox.architecture, run_judge.chunk, settings.mirror)
        judge.start_from(blackbox)
        history = History()
        train_judge(judge, data.train.x, probs["train"], settings, generator, history,
                    noise_std=cfg.road_noise_std)
        judges[", ".join(f"{key} {value}" for key, value in overrides.items())] = {
            **agreements(judge), "train_seconds": round(history.elapsed, 1)}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True,
                            text=True, check=False).stdout.strip() or None
    print(json.dumps({"workspace_commit": commit,
                      "workspace_params": {"blackbox": asdict(cfg.blackbox),
                                           "judge": asdict(cfg.judge)},
                      "host": host(), "test_images": len(x),
                      "blackbox_accuracy": accuracy, "judge_agreement": judges}, indent=1))


if __name__ == "__main__":
    main()
