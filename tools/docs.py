"""The documentation's results, generated from the committed metrics so no number is typed by hand.

    python tools/docs.py            # rewrite the marked blocks of README.md and docs/*.md
    python tools/docs.py --check    # exit 1 naming each page and block that differs from HEAD's metrics

A block sits between `<!-- results:NAME -->` and `<!-- /results:NAME -->`; everything else on a
page is left alone. Every block in `BLOCKS` appears on exactly one page (README.md or a page of
docs/). The numbers come from `metrics/`, `experiments/` and `params.yaml`. Rewriting reads the
workspace's (what you are about to commit with the pages); the check reads them as git holds
them at HEAD, so a `dvc repro` that moves a metric in the third decimal (another CPU, no native
bf16) does not make the pages "drift". `--rev REV` reads another revision, `--workspace` the
workspace; outside a git checkout the workspace is read. `tests/test_readme.py` runs the check.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import yaml

if __package__ in (None, ""):  # run as `python tools/docs.py`: the repository on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xai.devices import NATIVE_BF16_FLAGS  # noqa: E402
from xai.evaluation import counterfactual_measures  # noqa: E402
from xai.evaluation.table import construction_note, interval_cell, markdown  # noqa: E402
from xai.evaluation.uncertainty import Interval  # noqa: E402
from xai.models.explainers import CHUNK_SIZE  # noqa: E402
from xai.pipeline import bench  # noqa: E402
from xai.pipeline.config import flatten  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: What the blocks read; `snapshot` takes these from git.
SOURCES = ("metrics", "timings", "experiments", "params.yaml")
VARIANTS = "experiments/vibi_variants.jsonl"
JUDGED_VARIANTS = "experiments/vibi_variants_judged.jsonl"
#: Headline metrics compared across hosts: (metrics file, key, what the table calls it).
HOST_HEADLINES = (("blackbox", "test_accuracy", "black box test accuracy"),
                  ("judge", "test_agreement_k12", "judge agreement, 12 of 49 chunks"),
                  ("vibi", "posthoc_accuracy", "VIBI post-hoc accuracy"),
                  ("invertible", "image_test_accuracy", "invertible classifier test accuracy"),
                  ("counterfactuals", "runner_up_im1_normalised", "normalised IM1, runner-up"))
#: The bench with `XAI_CPU_BF16=0` before and after a change (`{"before": run, "after": run}`).
BENCH_FP32 = "experiments/bench_fp32.json"
#: The same bench three times in a row on a second host, whose fp32 ceiling is near an AVX2 laptop's.
BENCH_FP32_REPEATS = "experiments/bench_fp32_epyc.json"
#: Whole-pipeline runs of `experiments/pipeline_timing.py` on MNIST, one per line, by name.
PIPELINES = "experiments/pipelines.jsonl"
#: The CIFAR-10 hour command's record (on the host kind that made the page's numbers), the same
#: command on other hosts, and every CIFAR-10 setting run before it.
CIFAR_RECORD = "experiments/cifar10_cpu_pipeline.json"
CIFAR_RERUNS: tuple[str, ...] = ("experiments/cifar10_cpu_epyc_pipeline.json",)
CIFAR_VARIANTS = "experiments/cifar10_variants_pipelines.jsonl"
SERVING = "experiments/serving_bench.json"  # the served explainer's benchmark
BENCHES = {"The defaults (MNIST)": "experiments/bench.json",
           "The first CIFAR-10 CPU setting, VIBI only": "experiments/bench_cifar_cpu.json",
           "airbench's black box (the `cifar10_cpu` recipe's)":
               "experiments/bench_cifar_airbench.json"}


def _json(root: Path, name: str) -> dict:
    return json.loads((root / name).read_text())


def experiment_module(root: Path, name: str) -> ModuleType:
    """The script `experiments/<name>.py` under `root`, imported as a module."""
    spec = importlib.util.spec_from_file_location(name, root / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _counterfactual_row(cf: dict) -> str:
    def ci(key: str, fmt: str) -> str:
        return Interval(cf[key], cf[key + "_low"], cf[key + "_high"]).text(fmt)

    posthoc = {key.split("_posthoc")[0].removeprefix("image_"): (key.rsplit("_k", 1)[1], v)
               for key, v in cf.items() if "_posthoc_accuracy_k" in key}
    gap = next(key for key in cf if key.startswith("image_boundary_minus_saliency_posthoc_k")
               and not key.endswith(("_low", "_high")))
    return (f"validity (black box gives the target) "
            f"{ci('image_counterfactual_validity', '.3f')}; "
            f"L1 {cf['image_counterfactual_l1']:.1f}, L2 {cf['image_counterfactual_l2']:.2f}; "
            f"bits/dim {cf['image_counterfactual_bits_per_dim']:.2f} (test images "
            f"{cf['image_test_bits_per_dim']:.2f}); pixels out of range "
            f"{ci('image_counterfactual_out_of_range', '.4f')}; post-hoc accuracy on its own "
            "model "
            + ", ".join(f"{name} {v:.3f} (k = {k})" for name, (k, v) in sorted(posthoc.items()))
            + f", boundary minus saliency {ci(gap, '+.3f')}")


def stages_block(root: Path) -> str:
    """One row per stage: its headline quality figures from `metrics/*.json`."""
    bb, inv = _json(root, "metrics/blackbox.json"), _json(root, "metrics/invertible.json")
    toy, cf = _json(root, "metrics/invertible_toy.json"), _json(root, "metrics/counterfactuals.json")
    judge, l2x, vibi = (_json(root, f"metrics/{n}.json") for n in ("judge", "l2x", "vibi"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    v = params["vibi"]
    judge_k = {int(k.rsplit("_k", 1)[1]): val for k, val in judge.items()
               if k.startswith("test_agreement_k")}
    judge_row = ", ".join(f"{b} of {judge['num_chunks']}: {judge_k[b]:.3f}"
                          for b in sorted(judge_k))
    rows = [
        ("`train_blackbox`", f"test accuracy {bb['test_accuracy']:.4f} "
                             f"(validation {bb['val_accuracy']:.4f})"),
        ("`train_judge`", f"agreement with the black box on random chunk subsets, by chunks "
                          f"kept: {judge_row}"),
        ("`train_invertible_toy`", f"test accuracy {toy['toy_test_accuracy']:.4f}; max "
                                   f"reconstruction error {toy['max_reconstruction_error']:.1e},"
                                   f" max projection residual "
                                   f"{toy['max_projection_residual']:.1e}"),
        ("`train_invertible`", f"test accuracy {inv['image_test_accuracy']:.4f}; max reconstruction"
                               f" error {inv['image_max_reconstruction_error']:.1e}, max projection"
                               f" residual {inv['image_max_projection_residual']:.1e}; training "
                               f"{inv['image_train_bits_per_dim']:.2f} bits/dim"),
        ("`evaluate_counterfactuals`", _counterfactual_row(cf))]
    for name, m, epochs in (("l2x", l2x, v["l2x_epochs"]), ("vibi", vibi, v["epochs"])):
        rows.append((f"`train_{name}` (objective `{v['objective']}`, beta {m['beta']}, "
                     f"{epochs} epochs)",
                     f"post-hoc accuracy at k = {m['k']} {m['posthoc_accuracy']:.4f}; its own "
                     f"approximator's agreement {m['approximator_fidelity']:.4f}; mean KL "
                     f"{m['mean_kl']:.2f}"))
    return "\n".join(["| stage | result (test set) |", "|---|---|",
                      *(f"| {a} | {b} |" for a, b in rows)])


def evaluation_block(root: Path) -> str:
    """`metrics/evaluation.json` and its paired differences as the evaluate stage's tables."""
    table = _json(root, "metrics/evaluation.json")
    diffs = _json(root, "metrics/evaluation_differences.json")
    params = yaml.safe_load((root / "params.yaml").read_text())
    budgets = sorted(int(k.rsplit("_k", 1)[1]) for k in table["judge"]
                     if re.fullmatch(r"judge_agreement_k\d+", k))
    k = params["vibi"]["k"]
    return markdown(table, k, budgets, params["evaluate"]["robustness_images"], diffs,
                    construction_note(params["vibi"]["objective"], k,
                                      params["vibi"]["fill"])).rstrip("\n")


def _chunks(c: int, count: int | None = None) -> str:
    """What a budget counts in a run whose chunks are c x c pixels: pixels, or chunks (`count`
    of them)."""
    if c == 1:
        return "pixels" if count is None else f"{count} pixels"
    return (f"chunks of {c}x{c} pixels" if count is None
            else f"{count} chunks of {c}x{c} = {count * c * c} pixels")


def _chunk_size(params: dict) -> int:
    """The side, in pixels, of a run's chunks (its VIBI explainer's)."""
    return CHUNK_SIZE[params["vibi"]["explainer_type"]]


def hosts_block(root: Path) -> str:
    """What the default pipeline takes by kind of host (`PIPELINES`): the committed `auto` run,
    the same host with every precision forced to fp32 (what `auto` runs on a CPU without native
    bf16), and `auto` runs on other kinds of host with their headline metrics beside the
    committed run's; a GPU is unverified until a run on one is committed."""
    auto, fp32 = pipeline(root, "default"), pipeline(root, "fp32")
    host = auto["host"]
    if fp32["host"] != host:
        raise ValueError(f"the fp32 run ran on {fp32['host']}, the default run on {host}: "
                         "compare them from one machine")
    minutes = auto["total_seconds"] / 60, fp32["total_seconds"] / 60
    others = [pipeline(root, "default_epyc")]
    lines = ["| host | precision | the default pipeline, end to end |", "|---|---|---|",
             f"| {bench.host_label(host)} | `auto`: bf16 | {minutes[0]:.1f} min |",
             f"| the same host, as one without native bf16 runs it | fp32 (forced) | "
             f"{minutes[1]:.1f} min ({minutes[1] / minutes[0]:.2f}x) |"]
    lines += [f"| {bench.host_label(run['host'])} | `auto`: "
              f"{'bf16' if NATIVE_BF16_FLAGS & set(run['host']['flags']) else 'fp32'} | "
              f"{run['total_seconds'] / 60:.1f} min |" for run in others]
    lines.append("| a CUDA GPU | `auto`: bf16 | unverified: no GPU run is committed |")
    quick = pipeline(root, "quick")
    lines += ["", f"`dvc exp run -S recipe=quick` (the whole pipeline on subsets, not results) "
              f"from a fresh clone: {quick['total_seconds'] / 60:.1f} min on "
              f"{bench.host_label(quick['host'])}."]
    if others:
        committed = {stage: _json(root, f"metrics/{stage}.json") for stage, _, _ in HOST_HEADLINES}
        lines += ["", "Results are bit-identical only on the same kind of host. The committed "
                  "metrics (`dvc repro` on the first row's kind of host) beside those runs':", "",
                  "| metric | committed | " + " | ".join(
                      f"{run['host']['cpu']}, commit `{run['commit'][:7]}`" for run in others)
                  + " |", "|---|---|" + "---|" * len(others)]
        lines += [f"| {label} | {committed[stage][key]:.4f} | " + " | ".join(
            f"{run['metrics'][stage][key]:.4f}" for run in others) + " |"
            for stage, key, label in HOST_HEADLINES]
    return "\n".join(lines)


def evaluation_headline_block(root: Path) -> str:
    """The evaluate stage's headline: every method's post-hoc accuracy and judge fidelity at
    `vibi.k` (best judge fidelity first), beside the judge's agreement on random subsets."""
    table = _json(root, "metrics/evaluation.json")
    v = yaml.safe_load((root / "params.yaml").read_text())["vibi"]
    k = v["k"]
    posthoc, fidelity = f"posthoc_accuracy_k{k}", f"fidelity_k{k}"
    lines = [construction_note(v["objective"], k, v["fill"]), "",
             f"| method | explains | {fidelity} | {posthoc} |", "|---|---|---|---|"]
    methods = table["methods"]
    for name, row in sorted(methods.items(), key=lambda item: -item[1].get(fidelity, -1.0)):
        lines.append(f"| {name} | {row['explains']} | {interval_cell(row, fidelity)} | "
                     f"{interval_cell(row, posthoc)} |")
    if table["judge"]:
        judge = interval_cell(table["judge"], f"judge_agreement_k{k}")
        lines += ["", f"On random subsets of {k} chunks the judge agrees with the black box on "
                  f"{judge} of the images: a method's fidelity is read against that."]
    return "\n".join(lines)


def evaluation_encoding_block(root: Path) -> str:
    """Every method's `encoding` (nats) with its interval, controls first, then by the measure."""
    methods = _json(root, "metrics/evaluation.json")["methods"]
    controls = {"random": "non-encoding by construction",
                "control_fixed": "non-encoding by construction",
                "control_class_position": "encoding by construction"}
    order = [*[m for m in controls if m in methods],
             *sorted((m for m in methods if m not in controls),
                     key=lambda m: -methods[m].get("encoding", float("-inf")))]
    lines = ["| method | encoding (nats) | |", "|---|---|---|"]
    for name in order:
        cell = Interval(*(methods[name][k] for k in
                          ("encoding", "encoding_ci_low", "encoding_ci_high"))).text("+.3f")
        lines.append(f"| {name} | {cell} | {controls.get(name, '')} |")
    return "\n".join(lines)


def evaluation_cost_block(root: Path) -> str:
    """What an explanation costs (`timings/evaluate.json`'s `cost`, wall-clock, and the explained
    model's evaluations from `metrics/evaluation.json`), beside its judge fidelity at `vibi.k`,
    and how many images the amortised methods need to repay their training."""
    cost = _json(root, "timings/evaluate.json")["cost"]
    methods = _json(root, "metrics/evaluation.json")["methods"]
    fidelity = f"fidelity_k{yaml.safe_load((root / 'params.yaml').read_text())['vibi']['k']}"
    training = cost["training_seconds"]
    lines = [f"| method | seconds per image | model evaluations per image | {fidelity} |",
             "|---|---|---|---|"]
    for name, c in sorted(cost["methods"].items(), key=lambda item: item[1]["seconds_per_image"]):
        amortised = f" (+ {training[name]:.0f} s training once)" if name in training else ""
        lines.append(f"| {name} | {c['seconds_per_image']:.2e}{amortised} | "
                     f"{methods[name]['model_evaluations_per_image']:g} | "
                     f"{interval_cell(methods[name], fidelity)} |")
    others = sorted({m for rows in cost["break_even_images"].values() for m in rows})
    lines += ["", "Images beyond which training plus explaining costs less than explaining with "
              "each method (never: the method is cheaper per image):", "",
              "| amortised | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
    for name, rows in cost["break_even_images"].items():
        lines.append(f"| {name} | " + " | ".join(
            "never" if rows[m] is None else f"{rows[m]:,}" for m in others) + " |")
    return "\n".join(lines)


def _records(root: Path, name: str) -> list[dict]:
    """The JSON lines of `name` (records of `experiments/pipeline_timing.py`, sweeps)."""
    return [json.loads(line) for line in (root / name).read_text().splitlines() if line]


def pipeline(root: Path, name: str) -> dict:
    """The run called `name` in `PIPELINES`."""
    found = [run for run in _records(root, PIPELINES) if run["name"] == name]
    if len(found) != 1:
        raise ValueError(f"{PIPELINES} holds {len(found)} runs called {name!r}, not one")
    return found[0]


def _pixels_key(params: dict, prefix: str, pixels: int) -> str:
    """The key of a budget of `pixels` pixels in a run whose chunks are its explainer's."""
    return f"{prefix}_k{pixels // _chunk_size(params) ** 2}"


def cifar_cost_block(root: Path) -> str:
    """What the hour command takes on each kind of host (`CIFAR_RECORD`, then `CIFAR_RERUNS`),
    stage by stage, with every rerun's metrics compared to the record's."""
    runs = [_json(root, CIFAR_RECORD), *(_json(root, name) for name in CIFAR_RERUNS)]
    stages = list(runs[0]["stage_seconds"])
    lines = ["| host | commit | minutes | " + " | ".join(f"`{s}`" for s in stages) + " |",
             "|---|---|---|" + "---|" * len(stages)]
    for run in runs:  # a run cut short: "-" for the stages it did not reach, its minutes so far
        done = {s: f"{run['stage_seconds'][s]:.0f}" for s in stages if s in run["stage_seconds"]}
        lines.append(f"| {bench.host_label(run['host'])} | `{run['commit'][:7]}` | "
                     f"{run['total_seconds'] / 60:.1f}{'' if len(done) == len(stages) else ' so far'}"
                     " | " + " | ".join(done.get(s, "-") for s in stages) + " |")
    record = flatten(runs[0]["metrics"])
    for name, run in zip(CIFAR_RERUNS, runs[1:]):
        both = {k: v for k, v in flatten(run["metrics"]).items() if k in record}
        lines += ["", f"`{name}` beside the record: of the {len(both)} metric values both hold, "
                  f"{sum(record[k] == v for k, v in both.items())} are equal to the bit."]
    headlines = [("black box test accuracy", "blackbox", "test_accuracy"),
                 ("judge agreement, 256 pixels kept, ROAD-imputed", "judge",
                  _pixels_key(runs[0]["params"], "test_agreement_imputed", 256)),
                 ("L2X post-hoc accuracy", "l2x", "posthoc_accuracy"),
                 ("VIBI post-hoc accuracy", "vibi", "posthoc_accuracy")]
    lines += ["", "| | " + " | ".join(f"`{run['commit'][:7]}`, {run['host']['cpu']}"
                                      for run in runs) + " |", "|---|" + "---|" * len(runs)]
    lines += [f"| {label} | " + " | ".join(f"{run['metrics'][stage][key]:.4f}" if stage in
              run["metrics"] else "-" for run in runs) + " |" for label, stage, key in headlines]
    return "\n".join(lines)


def _headline_columns(params: dict) -> list[str]:
    """A run's post-hoc accuracy and judge fidelity at `vibi.k`, and the same with ROAD's fill
    where its evaluation measured them (`evaluate.road_budgets`)."""
    k = params["vibi"]["k"]
    fills = ("", "_road") if params["evaluate"].get("road_budgets", False) else ("",)
    return [f"{measure}{fill}_k{k}" for fill in fills
            for measure in ("posthoc_accuracy", "fidelity")]


def run_block(root: Path, results: str) -> str:
    """A pipeline run's results: the judge's agreement with the black box by budget, then every
    method's post-hoc accuracy and judge fidelity at `vibi.k` with ROAD's fill where measured
    (best first by the judge, with ROAD's fill where there is one: it favours no method by
    construction), and VIBI minus each method with paired intervals."""
    run = _json(root, results)
    m, params = run["metrics"], run["params"]
    judge, c, v = m["judge"], _chunk_size(params), params["vibi"]
    k, images = v["k"], params["evaluate"]["num_images"]
    budgets = sorted(int(key.rsplit("_k", 1)[1]) for key in judge
                     if key.startswith("test_agreement_k"))
    columns = _headline_columns(params)
    order = columns[-1]
    lines = [f"Black box test accuracy {m['blackbox']['test_accuracy']:.4f}. The judge's "
             f"agreement with it on random subsets of the test images ({params['judge']['epochs']}"
             f" epochs{', mirrored' if params['judge'].get('mirror') else ''}; of "
             f"{_chunks(c, int(judge['num_chunks']))}):", "",
             f"| kept {_chunks(c)} | " + " | ".join(str(b) for b in budgets) + " |",
             "|---|" + "---|" * len(budgets),
             "| 0-filled | " + " | ".join(f"{judge[f'test_agreement_k{b}']:.3f}"
                                         for b in budgets) + " |",
             "| ROAD-imputed | " + " | ".join(f"{judge[f'test_agreement_imputed_k{b}']:.3f}"
                                             for b in budgets) + " |", "",
             construction_note(v["objective"], k, v.get("fill", "zero")), "",
             f"| method ({images} test images) | explains | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for name, row in sorted(m["evaluation"]["methods"].items(), key=lambda i: -i[1][order]):
        lines.append(f"| {name} | {row['explains']} | "
                     + " | ".join(interval_cell(row, col) for col in columns) + " |")
    lines += ["", f"VIBI minus each method, `{order}`, paired 95 % interval over the same "
              "images:", "", "| method | difference |", "|---|---|"]
    for name, row in sorted(m["evaluation_differences"].items(),
                            key=lambda item: -item[1][order]["difference"]):
        cell = row[order]
        lines.append(f"| {name} | {cell['difference']:+.3f} [{cell['ci_low']:+.3f}, "
                     f"{cell['ci_high']:+.3f}] |")
    return "\n".join(lines)


def _gains(params: dict, judge: dict) -> list[tuple[str, int, str]]:
    """(key, budget, fill) of a run's gains over random chunks: at `vibi.k` and at a quarter of
    the chunks, with ROAD's fill first where measured."""
    k, quarter = params["vibi"]["k"], int(judge["num_chunks"]) // 4
    fills = ("_road", "") if params["evaluate"].get("road_budgets", False) else ("",)
    return [(f"fidelity{fill}_over_random_k{b}", b, fill) for b in (k, quarter) for fill in fills]


def gains_block(root: Path, results: str) -> str:
    """A run's gains over random chunks (`evaluate.random_draws`): every method's judge fidelity
    minus random chunks' expected fidelity on the same image, best first by the first gain."""
    run = _json(root, results)
    params, rows = run["params"], run["metrics"]["evaluation"]["methods"]
    c, gains = _chunk_size(params), _gains(params, run["metrics"]["judge"])
    lines = [f"Random chunks' expected fidelity from {params['evaluate']['random_draws']} draws "
             "per image: " + ", ".join(
                 f"{_chunks(c, b)}{', ROAD fill' if fill else ', 0-filled'} "
                 f"{rows['random'][f'fidelity{fill}_k{b}'] - rows['random'][key]:.3f}"
                 for key, b, fill in gains) + ". Each method's judge fidelity minus that, on "
             "the same image; mean [95 % interval over images]:", "",
             "| method | " + " | ".join(f"{_chunks(c, b)}, {'ROAD fill' if fill else '0-filled'}"
                                      for _, b, fill in gains) + " |",
             "|---|" + "---|" * len(gains)]
    for name, row in sorted(rows.items(), key=lambda item: -item[1][gains[0][0]]):
        lines.append(f"| {name} | " + " | ".join(interval_cell(row, key, signed=True)
                                                  for key, _, _ in gains) + " |")
    return "\n".join(lines)


def limits_block(root: Path, results: str) -> str:
    """What a run does not show, from its own table: where the fixed central selection beats every
    method under ROAD deletion, and which methods' gain over random chunks at `vibi.k` is below 0
    with its whole interval."""
    run = _json(root, results)
    params, rows = run["params"], run["metrics"]["evaluation"]["methods"]
    c, k = _chunk_size(params), params["vibi"]["k"]
    methods = {n: r for n, r in rows.items() if not n.startswith("control_") and n != "random"}
    best = min(methods, key=lambda n: methods[n]["deletion_auc_road"])
    fixed = rows["control_fixed"]["deletion_auc_road"]
    lines = [f"- Under ROAD deletion (area under the curve, lower is better) the fixed central "
             f"selection scores {interval_cell(rows['control_fixed'], 'deletion_auc_road')}; "
             f"the best method, {best}, {interval_cell(methods[best], 'deletion_auc_road')}"
             + (": no method beats it." if fixed < methods[best]["deletion_auc_road"] else ".")]
    for key, b, fill in _gains(params, run["metrics"]["judge"]):
        if b != k:
            continue
        above, below = ([n for n, r in sorted(methods.items()) if side * r[f"{key}_ci_{end}"] > 0]
                        for side, end in ((1, "low"), (-1, "high")))
        filled = ", ROAD fill" if fill else ", 0-filled"
        lines.append(f"- Under the judge at {_chunks(c, b)}{filled}, {len(above)} of "
                     f"{len(methods)} methods are above random chunks with their whole interval "
                     f"({', '.join(above) or 'none'}) and {len(below)} below "
                     f"({', '.join(below) or 'none'}).")
    return "\n".join(lines)


def cifar_variants_block(root: Path) -> str:
    """Every CIFAR-10 setting run end to end (`CIFAR_VARIANTS`, then the record and its reruns):
    one row each, with what it changed from the row above and its headline numbers."""
    runs = [*_records(root, CIFAR_VARIANTS), {"name": "hour command", **_json(root, CIFAR_RECORD)},
            *({"name": "hour command", **r} for r in (_json(root, n) for n in CIFAR_RERUNS)
              if "evaluation" in r["metrics"])]  # a rerun cut short is in the cost block alone
    defaults = flatten(yaml.safe_load((root / "params.yaml").read_text()))
    lines = ["| variant | host | changed from the row above | minutes | evaluation images | "
             "black box | judge, 256 px, ROAD | L2X post-hoc | VIBI post-hoc | VIBI over random "
             "at k (ROAD fill where measured) |", "|---|---|---|---|---|---|---|---|---|---|"]
    before: dict = {}
    for run in runs:
        params, m = run["params"], run["metrics"]
        flat = flatten(params)
        changed: dict[str, list[str]] = {}  # by section; a key new to the code shows if not default
        for key in sorted(flat):
            was = before.get(key, defaults.get(key))
            if key != "data.root" and flat[key] != was:
                section, _, name = key.rpartition(".")
                changed.setdefault(section, []).append(f"{name} {flat[key]}")
        changed_text = "; ".join(f"{s}: {', '.join(v)}" for s, v in changed.items()) or "none"
        minutes = "resumed" if "resumed" in run else f"{run['total_seconds'] / 60:.1f}"
        judge = m["judge"].get(_pixels_key(params, "test_agreement_imputed", 256))
        key, _, _ = _gains(params, m["judge"])[0]
        gain = interval_cell(m["evaluation"]["methods"]["vibi"], key, signed=True)
        lines.append(f"| {run['name']} | {run['host']['cpu'].split(' Processor')[0]} | "
                     f"{changed_text if before else 'the first setting'} | {minutes} | "
                     f"{params['evaluate']['num_images']} | {m['blackbox']['test_accuracy']:.3f} | "
                     f"{'-' if judge is None else f'{judge:.3f}'} | "
                     f"{m['l2x']['posthoc_accuracy']:.3f} | {m['vibi']['posthoc_accuracy']:.3f} | "
                     f"{gain} |")
        before = flat
    return "\n".join(lines)


def _table(script: str, read: Callable[[Path, str], object], results: str,
           draw: str = "markdown") -> Callable[[Path], str]:
    """A block drawn by `experiments/<script>.py`'s own `draw` function from its `results`."""
    return lambda root: getattr(experiment_module(root, script), draw)(read(root, results))


BLOCKS: dict[str, Callable[[Path], str]] = {
    "stages": stages_block, "evaluation-headline": evaluation_headline_block,
    "evaluation-cost": evaluation_cost_block, "evaluation-encoding": evaluation_encoding_block,
    "evaluation": evaluation_block, "hosts": hosts_block,
    "bench": lambda root: "\n\n".join(bench.markdown(_json(root, name), f"{title} (`{name}`)")
                                        for title, name in BENCHES.items()),
    "bench-fp32": lambda root: bench.fp32_markdown(**_json(root, BENCH_FP32)),
    "bench-fp32-repeats": lambda root: bench.repeats_markdown(_json(root, BENCH_FP32_REPEATS),
                                                              BENCH_FP32_REPEATS),
    "reliability": _table("reliability", _json, "experiments/reliability.json"),
    "scaling": _table("scaling", _json, "experiments/scaling.json"),
    "shared-cores": _table("shared_cores", _json, "experiments/shared_cores.json"),
    "vibi-variants": _table("vibi_variants", Path.joinpath, VARIANTS),
    "vibi-variants-judged": _table("vibi_variants", Path.joinpath, JUDGED_VARIANTS,
                                   "judged_markdown"),
    "counterfactual-sweep": _table("counterfactual_sweep", _records,
                                   "experiments/counterfactual_sweep.jsonl"),
    "counterfactual-measures-sweep": _table("counterfactual_measures_sweep", _records,
                                            "experiments/counterfactual_measures_sweep.jsonl"),
    "counterfactual-measures": lambda root: counterfactual_measures.markdown(
        _json(root, "metrics/counterfactuals.json"), published=True),
    "counterfactual-measures-fashion": _table("fashion_counterfactuals", _json,
                                              "experiments/fashion_counterfactuals.json"),
    "cifar10-cost": cifar_cost_block,
    "cifar10-run": functools.partial(run_block, results=CIFAR_RECORD),
    "cifar10-gains": functools.partial(gains_block, results=CIFAR_RECORD),
    "cifar10-limits": functools.partial(limits_block, results=CIFAR_RECORD),
    "cifar10-variants": cifar_variants_block,
    "serving-bench": _table("serving_bench", _json, SERVING),
    "serving-answer": _table("serving_bench", _json, SERVING, "answer_markdown")}

#: A block's opening mark, on a line of its own (a mark quoted inside a line is text).
_MARK = re.compile(r"^<!-- results:([\w-]+) -->$", re.M)


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"^(<!-- results:{name} -->\n)(?:.*?\n)?(<!-- /results:{name} -->)$",
                      re.S | re.M)


def pages(root: Path = ROOT) -> dict[str, str]:
    """README.md and every docs/*.md under `root`, by path relative to it."""
    paths = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return {p.relative_to(root).as_posix(): p.read_text() for p in paths if p.exists()}


def placement(texts: dict[str, str]) -> dict[str, str]:
    """Block name -> the one page that holds it. Raises `ValueError` naming a block that is on no
    page, on several, opened without its closing mark, or unknown to `BLOCKS`."""
    where: dict[str, list[str]] = {}
    for page, text in texts.items():
        for name in _MARK.findall(text):
            if name not in BLOCKS:
                raise ValueError(f"{page}: unknown block <!-- results:{name} --> "
                                 f"(known: {', '.join(BLOCKS)})")
            if not _pattern(name).search(text):
                raise ValueError(f"{page}: block <!-- results:{name} --> has no closing "
                                 f"<!-- /results:{name} -->")
            where.setdefault(name, []).append(page)
    for name in BLOCKS:
        found = where.get(name, [])
        if not found:
            raise ValueError(f"no page has the block <!-- results:{name} --> ... "
                             f"<!-- /results:{name} --> (pages: {', '.join(texts)})")
        if len(found) > 1:
            raise ValueError(f"block results:{name} is on several pages: {', '.join(found)}; "
                             "a block belongs to exactly one page")
    return {name: pages_[0] for name, pages_ in where.items()}


def render(texts: dict[str, str], source: Path = ROOT) -> dict[str, str]:
    """`texts` (page -> text) with every marked block replaced by what the files under `source`
    (its `metrics/`, `experiments/`, `params.yaml`) say."""
    out = dict(texts)
    for name, page in placement(texts).items():
        text = BLOCKS[name](source)
        out[page] = _pattern(name).sub(lambda m: m.group(1) + text + "\n" + m.group(2), out[page])
    return out


def drift(texts: dict[str, str], source: Path = ROOT) -> list[tuple[str, str]]:
    """(page, block) for every block whose text differs from what `source` says."""
    wanted = render(texts, source)
    return [(page, name) for name, page in placement(texts).items()
            if _pattern(name).search(texts[page]).group(0)
            != _pattern(name).search(wanted[page]).group(0)]


def snapshot(dest: Path, rev: str = "HEAD", root: Path = ROOT) -> Path:
    """`SOURCES` as git holds them at `rev` in the repository at `root`, extracted under `dest`
    (returned); `root` itself when it is not a git checkout (an unpacked release, no git)."""
    try:
        inside = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root,
                                capture_output=True, text=True)
    except OSError:  # no git at all
        return root
    if inside.returncode != 0 or Path(inside.stdout.strip()).resolve() != root.resolve():
        return root
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "--", *SOURCES], cwd=root,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: refuse links and absolute paths
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)  # noqa: S202 - our own repository's archive
    return dest


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="only report the pages and blocks that differ (exit 1)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rev", help="read the metrics git holds at this revision (default for "
                                     "--check: HEAD)")
    where.add_argument("--workspace", action="store_true",
                       help="read the workspace's metrics (default when rewriting)")
    args = parser.parse_args(argv)
    rev = args.rev or ("HEAD" if args.check and not args.workspace else None)
    texts = pages(root)
    with tempfile.TemporaryDirectory() as tmp:
        source = snapshot(Path(tmp), rev, root) if rev else root
        try:
            if args.check:
                drifted = drift(texts, source)
                for page, name in drifted:
                    print(f"{page}: block results:{name} differs from the metrics "
                          f"{'at ' + rev if rev and source != root else 'in the workspace'} "
                          f"(run python tools/docs.py)")
                return 1 if drifted else 0
            for page, text in render(texts, source).items():
                if text != texts[page]:
                    (root / page).write_text(text)
                    print(f"rewrote {page}")
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())
