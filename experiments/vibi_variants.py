"""VIBI / L2X training variants on MNIST, measured on validation images (never test).

    python experiments/vibi_variants.py experiments/vibi_variants.json [NAME ...] [--seeds 0 1 2]

Needs `dvc repro train_blackbox` first (the prepared data and the black box; `--data`, `--probs`,
`--blackbox` and `--params` point elsewhere, e.g. at a CIFAR-10 run). Every variant is
`base` with its overrides, trained from scratch, or with `--init MODEL` from that trained pair
(e.g. the pipeline's `models/l2x.pt`, as `vibi.jump_start` starts); one JSON line per (variant,
seed) goes to stdout: the black box's post-hoc accuracy on the top-k chunks, the pair's own
approximator's agreement (the published measure; for objective `blackbox` the approximator is the
black box), the cross-fitted accuracy of the class read from the masks' positions alone (random
masks: about 0.11; not encoding, see xai.evaluation.encoding) and mean KL. The committed
`experiments/vibi_variants.jsonl` was measured on one H100 (`gpu_seconds`).

With `--measure-images N` the first N validation images are also measured as the `evaluate`
stage measures the test set (`xai.evaluate` at budget k, with the neutral judge of `--judge`):
post-hoc accuracy, judge fidelity, deletion / insertion with 0 and ROAD fill and the encoding
check, each with its 95 % bootstrap interval, and VIBI minus each `--references` method
(attribution methods of the black box, measured once on the same images) paired over images.
Each reference also gets a line of its own (`"variant"`: its name, no seed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xai.data.prepared import Dataset, Split, load_dataset
from xai.evaluation.probes import class_from_mask_correct
from xai.evaluation.table import (
    HEADLINE,
    Evaluation,
    Report,
    differences,
    evaluate,
    headline_key,
)
from xai.evaluation.uncertainty import Interval
from xai.explain.attribution import (
    ExplainerDistribution,
    GradientShap,
    IntegratedGradients,
    Occlusion,
)
from xai.models.blackbox import load_blackbox, load_probabilities
from xai.models.judge import load_judge
from xai.models.vibi import VibiModel, VibiSpec, explain_split, load_vibi
from xai.pipeline.config import SHAP_BASELINES, Config, load_config
from xai.pipeline.tracking import NullRun
from xai.tensors import to_unit
from xai.train.loop import History, seed_everything
from xai.train.vibi import spec_for, summarize, train

MASK_PROBE_IMAGES = 3000
REFERENCES = ("gradient_shap", "occlusion", "integrated_gradients")


def references(names: list[str], blackbox: torch.nn.Module, data: Dataset, chunk: int,
               cfg: Config) -> dict[str, object]:
    """The black box's attribution methods `names`, built with the evaluate stage's params (the
    GradientShap baselines are `SHAP_BASELINES` training images drawn with `evaluate.seed`)."""
    ev = cfg.evaluate
    pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(ev.seed))
    made = {"gradient_shap": lambda: GradientShap(
                blackbox, to_unit(data.train.x[pick[:SHAP_BASELINES]]), ev.shap_samples),
            "occlusion": lambda: Occlusion(blackbox, chunk, ev.batch_size),
            "integrated_gradients": lambda: IntegratedGradients(
                blackbox, steps=ev.ig_steps, internal_batch_size=ev.batch_size)}
    return {name: made[name]() for name in names}


def starting_pair(spec: VibiSpec, init: Path | None, device: torch.device) -> VibiModel:
    """A new pair for `spec`, or the trained pair at `init`, which must have been built for `spec`."""
    if init is None:
        return VibiModel(spec).to(device)
    model = load_vibi(init, device)
    if model.spec != spec:
        raise SystemExit(f"{init} was trained for {model.spec}; this variant needs {spec}")
    return model


def measured(report: Report, method: str, others: Report | None = None) -> dict[str, object]:
    """`method`'s headline measures at the report's k as [mean, low, high], and with `others`
    (a report on the same images) its paired differences to each of their methods as
    [difference, low, high]."""
    row, k = report.table["methods"][method], report.settings.k
    keys = [headline_key(m, k) for m in HEADLINE if headline_key(m, k) in row]
    out: dict[str, object] = {"measures": {key: [round(row[key], 4), round(row[f"{key}_ci_low"], 4),
                                                 round(row[f"{key}_ci_high"], 4)]
                                           for key in keys}}
    if others is not None:
        both = Evaluation(report.evaluation.methods + others.evaluation.methods)
        out["minus"] = {other: {key: [round(d[key][n], 4)
                                      for n in ("difference", "ci_low", "ci_high")]
                                for key in keys if key in d}
                        for other, d in differences(both, report.settings, method).items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", type=Path)
    parser.add_argument("names", nargs="*", help="variants to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", default="data/prepared/images.pt")
    parser.add_argument("--probs", default="models/blackbox_probs.pt")
    parser.add_argument("--blackbox", default="models/blackbox.pt")
    parser.add_argument("--judge", default="models/judge.pt",
                        help="the neutral judge (dvc repro train_judge), for --measure-images")
    parser.add_argument("--init", type=Path,
                        help="a trained pair every variant starts from (as vibi.jump_start)")
    parser.add_argument("--measure-images", type=int, default=0,
                        help="validation images measured as the evaluate stage does (0: none)")
    parser.add_argument("--references", nargs="*", default=[], choices=REFERENCES,
                        help="attribution methods measured beside VIBI (with --measure-images)")
    args = parser.parse_args()
    if args.references and not args.measure_images:
        parser.error("--references needs --measure-images")
    spec = json.loads(args.variants.read_text())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.params, {"tracking.enabled": False})
    data = load_dataset(args.data, device)
    probs = load_probabilities(args.probs, device)
    blackbox = load_blackbox(args.blackbox, device)
    if args.measure_images:
        judge = load_judge(args.judge, device)
        x = to_unit(data.val.x[:args.measure_images])
        ev = cfg.evaluate
        k = spec["base"].get("k", cfg.vibi.k)
        how = replace(ev.measures((k,), k, judge.chunk, cfg.road_noise_std),
                      robustness_images=0)
        seed_everything(ev.seed, device)  # GradientShap draws with torch and numpy
        refs = references(args.references, blackbox, data, judge.chunk, cfg)
        measured_refs = evaluate(refs, blackbox, x, judge=judge, settings=how) if refs else None
        for ref in refs:
            print(json.dumps({"variant": ref, "settings": {}, "seed": None,
                              **measured(measured_refs, ref)}), flush=True)
    for name in args.names or list(spec["variants"]):
        overrides = spec["variants"][name]
        settings = replace(cfg.vibi, **{**spec["base"], **overrides}, resume=False,
                           jump_start=False)
        if args.measure_images and settings.k != how.k:
            raise SystemExit(f"variant {name} changes k; --measure-images measures one k")
        vibi_spec = spec_for(settings, data)
        if args.measure_images and vibi_spec.chunk != how.chunk:
            raise SystemExit(f"{args.judge} was trained on {how.chunk}-pixel chunks, variant "
                             f"{name} uses {vibi_spec.chunk}")
        for seed in args.seeds:
            torch.manual_seed(seed)
            model = starting_pair(vibi_spec, args.init, device)
            started = time.perf_counter()
            train(model, settings, Split(data.train.x, probs["train"]),
                  Split(data.val.x, probs["val"]), seed=seed, history=History(NullRun()),
                  show_progress=False, blackbox=blackbox, jump_started=args.init is not None)
            seconds = time.perf_counter() - started
            own = blackbox if settings.objective == "blackbox" else None
            result = explain_split(model, data.val.x, blackbox, approximator=own)
            measures = summarize(result, probs["val"])
            predicted = probs["val"].argmax(1)[:MASK_PROBE_IMAGES].cpu()
            class_from_mask = class_from_mask_correct(
                result.top_k[:MASK_PROBE_IMAGES].cpu(), predicted, probs["val"].shape[1]
            ).float().mean().item()
            line = {"variant": name, "settings": overrides, "seed": seed,
                    **({"init": str(args.init)} if args.init else {}),
                    "posthoc_accuracy": round(measures["posthoc_accuracy"], 4),
                    "approximator_fidelity": round(measures["fidelity"], 4),
                    "class_from_mask": round(class_from_mask, 4),
                    "mean_kl": round(measures["mean_kl"], 4),
                    "gpu_seconds" if device.type == "cuda" else "cpu_seconds": round(seconds, 1)}
            if args.measure_images:
                report = evaluate({"vibi": ExplainerDistribution(name, model.eval(), blackbox)},
                                  blackbox, x, judge=judge, settings=how)
                line |= measured(report, "vibi", measured_refs)
            print(json.dumps(line), flush=True)


def by_variant(path: Path) -> dict[str, list[dict]]:
    """The JSON lines of this script's results in `path`, grouped by variant in their order."""
    grouped: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        if line:
            run = json.loads(line)
            grouped.setdefault(run["variant"], []).append(run)
    return grouped


def markdown(path: Path) -> str:
    """The variants in `path` as the docs' table: one row per variant, the mean over its seeds
    with the range when there are several."""
    def cell(rows: list[dict], key: str) -> str:
        values = [r[key] for r in rows]
        mean = sum(values) / len(values)
        return f"{mean:.3f}" if len(values) == 1 else \
            f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"

    lines = ["| variant | changes from the base | seeds | post-hoc accuracy (black box) | own "
             "approximator's agreement | class from mask position |", "|---|---|---|---|---|---|"]
    for name, rows in by_variant(path).items():
        changes = ", ".join(f"{k} {v}" for k, v in rows[0]["settings"].items())
        seeds = ", ".join(str(r["seed"]) for r in rows)
        lines.append(f"| {name} | {changes} | {seeds} | {cell(rows, 'posthoc_accuracy')} | "
                     f"{cell(rows, 'approximator_fidelity')} | {cell(rows, 'class_from_mask')} |")
    return "\n".join(lines)


def judged_markdown(path: Path) -> str:
    """Variants and reference methods measured as the evaluation measures (`--measure-images N
    --references ...`) as the docs' table: one row per variant (mean over its seeds, with their
    range) or reference, and VIBI minus the reference with the highest judge fidelity, paired
    over images: the union of the seeds' 95 % intervals, and on how many seeds the interval
    excludes 0 on either side."""
    rows = by_variant(path)
    refs = {name: rs[0] for name, rs in rows.items() if rs[0]["seed"] is None}
    keys = list(next(iter(rows.values()))[0]["measures"])
    fidelity = next(key for key in keys if key.startswith("fidelity_k"))
    best = max(refs, key=lambda name: refs[name]["measures"][fidelity][0])

    def cell(rs: list[dict], key: str) -> str:
        values = [r["measures"][key] for r in rs]
        if len(values) == 1:
            return Interval(*values[0]).text()
        means = [v[0] for v in values]
        return f"{sum(means) / len(means):.3f} ({min(means):.3f}-{max(means):.3f})"

    def difference(rs: list[dict]) -> str:
        if best not in rs[0].get("minus", {}):
            return "-"
        d = [r["minus"][best][fidelity] for r in rs]
        below, above = sum(v[2] < 0 for v in d), sum(v[1] > 0 for v in d)
        return (f"{sum(v[0] for v in d) / len(d):+.3f} [{min(v[1] for v in d):+.3f}, "
                f"{max(v[2] for v in d):+.3f}]; significantly below on {below}, above on "
                f"{above} of {len(d)}")

    lines = ["| variant | changes from the base | seeds | " + " | ".join(keys)
             + f" | VIBI minus {best}, {fidelity} | own approximator's agreement |",
             "|---|---|---|" + "---|" * (len(keys) + 2)]
    for name, rs in rows.items():
        changes = ", ".join(f"{k} {v}" for k, v in rs[0]["settings"].items()) or "(reference)"
        seeds = ", ".join(str(r["seed"]) for r in rs if r["seed"] is not None) or "-"
        own = [r["approximator_fidelity"] for r in rs if "approximator_fidelity" in r]
        lines.append(f"| {name} | {changes} | {seeds} | "
                     + " | ".join(cell(rs, key) for key in keys)
                     + f" | {difference(rs)} | "
                     + (f"{sum(own) / len(own):.3f}" if own else "-") + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
