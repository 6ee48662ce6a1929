"""Judge fidelity of explanation methods against random chunks on a CIFAR-10 run (issue 28): does a
method keep the black box's prediction, as the judge reads it, better than random pixels?

    python experiments/cifar_fidelity_probe.py --workspace DIR [--judge NAME=PATH ...] \
        [--vibi NAME=PATH ...] [--images 1000] [--budgets 16 64 128 256] [--fills zero road] \
        > experiments/cifar_fidelity_probe.json

`DIR` is a checkout whose params.yaml holds a CIFAR-10 setting and in which the models exist
(`dvc repro train_vibi train_judge`); what those stages measured (accuracy, agreement, post-hoc
accuracy, training seconds) is copied into the output. Budgets count chunks (of the explainer's
size). On `--images` seeded test images (more than the setting's `evaluate.num_images`, to
narrow the intervals), for the workspace's judge and every `--judge` file
(for example one trained by `python -m stages.train_judge` with more epochs), every judge read as
the workspace's `judge.mirror` says: each method's
judge fidelity at every budget (the top-k chunks kept, the rest 0, as `evaluate` measures it) and
its paired difference to random chunks, with 95 % bootstrap intervals over the images. With
`--fills ... road`, the same with the removed pixels ROAD-imputed (`fidelity_road`, as
`evaluate.road_budgets` measures it), and, for every fill, the black box's own post-hoc accuracy
(`posthoc`, `posthoc_road`). Methods:
random chunks, LIME and KernelSHAP (the setting's samples), VIBI and L2X, gradient saliency, and
`vibi_NAME` for every `--vibi` file (VIBI trained again, for example at another `seed` by
`dvc repro -s train_vibi` in a copy of the workspace: the spread between trainings); the
black box's and the judges' passes in bf16 where the setting's `evaluate.precision` runs them so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xai.chunks import chunk_scores, expand, top_k_mask
from xai.data.imputation import noisy_linear_impute
from xai.data.prepared import load_dataset
from xai.devices import use_bf16
from xai.evaluation.uncertainty import bootstrap, paired_difference, resample_indices
from xai.explain.attribution import (
    ExplainerDistribution,
    GradientSaliency,
    KernelShap,
    Lime,
    RandomChunks,
)
from xai.models.blackbox import load_blackbox
from xai.models.judge import load_judge
from xai.models.vibi import load_vibi
from xai.pipeline.bench import host
from xai.pipeline.config import load_config
from xai.tensors import bf16_passes, predict, to_unit

RESAMPLES = 1000
BATCH = 250


def _named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _run_summary(ws: Path) -> dict:
    """What the workspace's own stages measured: the black box's test accuracy, the judge's
    agreement by budget, VIBI's and L2X's post-hoc accuracy at their k, and each of those
    stages' training seconds."""
    def read(name: str) -> dict:
        return json.loads((ws / name).read_text())

    judge = read("metrics/judge.json")
    return {"blackbox_test_accuracy": read("metrics/blackbox.json")["test_accuracy"],
            "judge_agreement": {k.removeprefix("test_agreement_"): v for k, v in judge.items()
                                if k.startswith("test_agreement_")},
            "posthoc_accuracy": {m: read(f"metrics/{m}.json")["posthoc_accuracy"]
                                 for m in ("vibi", "l2x")},
            "train_seconds": {m: read(f"timings/{m}.json")["train_seconds"]
                              for m in ("blackbox", "judge", "l2x", "vibi")}}


def _versus_random(answers: dict[str, dict[str, torch.Tensor]], predicted: torch.Tensor,
                   indices: torch.Tensor, measure: str) -> dict[str, dict[str, dict]]:
    """Per budget and method: how often `answers` (the black box's or a judge's class on the kept
    chunks) match the black box's prediction, and the paired difference to random chunks', each
    [mean, low, high] over the bootstrap `indices`."""
    out: dict[str, dict[str, dict]] = {}
    for budget, by_method in answers.items():
        random = (by_method["random"] == predicted).float()
        out[budget] = {}
        for name, answer in by_method.items():
            hits = (answer == predicted).float()
            out[budget][name] = {measure: list(asdict(bootstrap(hits, indices)).values()),
                                 "minus_random": list(asdict(paired_difference(
                                     hits, random, indices)).values())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--judge", type=_named_path, nargs="*", default=[], metavar="NAME=PATH")
    parser.add_argument("--vibi", type=_named_path, nargs="*", default=[], metavar="NAME=PATH")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 64, 128, 256])
    parser.add_argument("--fills", nargs="+", choices=("zero", "road"), default=["zero"])
    args = parser.parse_args()
    ws = args.workspace
    cfg = load_config(ws / "params.yaml")
    ev = cfg.evaluate
    device = torch.device("cpu")
    amp = use_bf16(ev.precision, device)
    data = load_dataset(ws / "data/prepared/images.pt")
    blackbox = load_blackbox(ws / "models/blackbox.pt")
    blackbox = bf16_passes(blackbox) if amp else blackbox  # as evaluate
    vibi, l2x = load_vibi(ws / "models/vibi.pt"), load_vibi(ws / "models/l2x.pt")
    chunk = vibi.spec.chunk
    pick = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(ev.seed))
    x = to_unit(data.test.x[pick[:args.images].sort().values])
    with torch.no_grad():  # not inference_mode: saliency takes these as targets under autograd
        predicted = predict(blackbox, x, BATCH).argmax(1)
    methods = {"random": RandomChunks(blackbox, chunk, ev.seed),
               "lime": Lime(blackbox, chunk, ev.lime_samples, ev.seed),
               "kernel_shap": KernelShap(blackbox, chunk, ev.lime_samples, ev.seed),
               "vibi": ExplainerDistribution("vibi", vibi, blackbox),
               "l2x": ExplainerDistribution("l2x", l2x, blackbox),
               "saliency": GradientSaliency(blackbox),
               **{f"vibi_{name}": ExplainerDistribution("vibi", load_vibi(path), blackbox)
                  for name, path in args.vibi}}
    scores = {name: torch.cat([chunk_scores(method.attribute(x[i:i + BATCH],
                                                             predicted[i:i + BATCH]).float(),
                                            chunk) for i in range(0, len(x), BATCH)])
              for name, method in methods.items()}
    indices = resample_indices(len(x), RESAMPLES, ev.seed)
    shape = tuple(x.shape[1:])
    mirrored = ", mirrored" if cfg.judge.mirror else ""
    judges = {f"the run's ({cfg.judge.epochs} epochs{mirrored})": ws / "models/judge.pt",
              **dict(args.judge)}
    loaded = {name: load_judge(path, mirror=cfg.judge.mirror) for name, path in judges.items()}
    if amp:
        for judge in loaded.values():
            judge.net = bf16_passes(judge.net)
    measured: dict[str, dict] = {}
    for fill in args.fills:
        suffix = "" if fill == "zero" else f"_{fill}"
        road = torch.Generator().manual_seed(ev.seed)
        agree: dict[str, dict[str, dict[str, torch.Tensor]]] = {"posthoc": {}} | {
            judge_name: {} for judge_name in loaded}
        for b in args.budgets:
            for table in agree.values():
                table[f"k{b}"] = {}
            for name, s in scores.items():
                keep = expand(top_k_mask(s, b), shape, chunk)
                with torch.inference_mode():
                    filled = torch.cat([
                        x[i:i + BATCH] * keep[i:i + BATCH] if fill == "zero" else
                        noisy_linear_impute(x[i:i + BATCH], keep[i:i + BATCH] > 0.5,
                                            cfg.road_noise_std, road)
                        for i in range(0, len(x), BATCH)])
                    agree["posthoc"][f"k{b}"][name] = predict(blackbox, filled, BATCH).argmax(1)
                    for judge_name, judge in loaded.items():
                        agree[judge_name][f"k{b}"][name] = torch.cat([
                            judge(filled[i:i + BATCH], keep[i:i + BATCH]).argmax(1)
                            for i in range(0, len(x), BATCH)])
        for table_name, table in agree.items():
            if table_name == "posthoc":
                measured[f"posthoc{suffix}"] = _versus_random(table, predicted, indices, "accuracy")
            else:
                measured.setdefault(f"fidelity{suffix}", {})[table_name] = _versus_random(
                    table, predicted, indices, "fidelity")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ws, capture_output=True,
                            text=True, check=False).stdout.strip() or None
    print(json.dumps({"workspace_commit": commit, "host": host(), "run": _run_summary(ws),
                      "images": len(x),
                      "chunk": chunk, "samples": ev.lime_samples, "vibi_fill": vibi.spec.fill,
                      "judges": {name: str(path) for name, path in judges.items()},
                      "vibis": {name: str(path) for name, path in args.vibi},
                      **measured}, indent=1))


if __name__ == "__main__":
    main()
