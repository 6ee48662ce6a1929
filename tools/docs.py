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
from xai.evaluation.table import construction_note, interval_cell, markdown  # noqa: E402
from xai.models.explainers import CHUNK_SIZE  # noqa: E402
from xai.pipeline.bench import percent  # noqa: E402
from xai.pipeline.config import flatten  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: What the blocks read; `snapshot` takes these from git.
SOURCES = ("metrics", "timings", "experiments", "params.yaml")
VARIANTS = {"vibi-variants": "experiments/vibi_variants.jsonl",
            "cifar-variants": "experiments/cifar_variants.jsonl",
            "cifar-cpu-variants": "experiments/cifar_cpu_variants.jsonl",
            "cifar-smooth-variants": "experiments/cifar_smooth_variants.jsonl",
            "cifar-jump-variants": "experiments/cifar_jump_variants.jsonl",
            "cifar-tau2-seeds": "experiments/cifar_tau2_seeds.jsonl"}
JUDGED_VARIANTS = "experiments/vibi_variants_judged.jsonl"
CIFAR_CPU = "experiments/cifar_cpu_pipeline.json"
CIFAR_AIRBENCH = "experiments/cifar_airbench_pipeline.json"
CIFAR_CHUNK2 = "experiments/cifar_airbench_chunk2_pipeline.json"
CIFAR_SMOOTH_PIPELINE = "experiments/cifar_airbench_smooth_pipeline.json"
CIFAR_MIRROR_PIPELINE = "experiments/cifar_airbench_mirror_pipeline.json"
CIFAR_GAIN_PIPELINE = "experiments/cifar_airbench_gain_pipeline.json"
CIFAR_GAIN1000_PIPELINE = "experiments/cifar_airbench_gain1000_pipeline.json"
CIFAR_GAIN_CLEAN_PIPELINE = "experiments/cifar_airbench_gain_clean_pipeline.json"
CIFAR_GAIN_AMX_PIPELINE = "experiments/cifar_airbench_gain_amx_pipeline.json"
CIFAR_GAIN1000_AMX_PIPELINE = "experiments/cifar_airbench_gain1000_amx_pipeline.json"
CIFAR_WIDE_PIPELINE = "experiments/cifar_airbench_wide_pipeline.json"
CIFAR_JUMP_PIPELINE = "experiments/cifar_airbench_jump_pipeline.json"
CIFAR_TAU2_PIPELINE = "experiments/cifar_airbench_tau2_pipeline.json"
CIFAR_TAU2_1000_PIPELINE = "experiments/cifar_airbench_tau2_1000_pipeline.json"
CIFAR_HOUR_PIPELINE = "experiments/cifar_airbench_hour_pipeline.json"
CIFAR_HOUR_RERUN_PIPELINE = "experiments/cifar_airbench_hour_rerun_pipeline.json"
CIFAR_AIRBENCH_SESSIONS = {
    "the reference, in the session of the gain setting's AMX run":
        "experiments/bench_cifar_airbench.json",
    "after the hour run": "experiments/bench_cifar_airbench_hour_session_1.json",
    "after the hour run, again": "experiments/bench_cifar_airbench_hour_session_2.json",
    "before the hour re-run": "experiments/bench_cifar_airbench_hour_rerun_session.json",
    "after the hour re-run": "experiments/bench_cifar_airbench_hour_rerun_session_after.json"}
CIFAR_JUMP1000_PIPELINE = "experiments/cifar_airbench_jump1000_pipeline.json"
#: The runs the tau2 run resumed, newest first (`_stage_seconds` composes its seconds from them).
CIFAR_TAU2_RESUMED_FROM = (CIFAR_JUMP1000_PIPELINE, CIFAR_JUMP_PIPELINE, CIFAR_WIDE_PIPELINE,
                           CIFAR_GAIN_AMX_PIPELINE)
CIFAR_PROBES = "experiments/cifar_probes.json"
CIFAR_FIDELITY = "experiments/cifar_fidelity_probe.json"
CIFAR_SMOOTH = "experiments/cifar_smooth_probe.json"
CIFAR_SMOOTH_RUN = "experiments/cifar_smooth_run_probe.json"
CIFAR_MIRROR_RUN = "experiments/cifar_mirror_run_probe.json"
CIFAR_JUDGE_BUDGETS = "experiments/cifar_judge_budgets.json"
CIFAR_JUDGE_LR = "experiments/cifar_judge_lr.json"
CIFAR_JUDGE_EPOCHS = "experiments/cifar_judge_epochs.json"
CIFAR_VIBI_PUBLISHED = "experiments/cifar_vibi_published.json"
FP32_PIPELINE = "experiments/fp32_pipeline.json"
#: The defaults' `auto` runs on other kinds of host (`experiments/pipeline_timing.py`).
OTHER_HOST_PIPELINES = ["experiments/default_pipeline_epyc.json"]
#: Headline metrics compared across hosts: (metrics file, key, what the table calls it).
HOST_HEADLINES = (("blackbox", "test_accuracy", "black box test accuracy"),
                  ("judge", "test_agreement_k12", "judge agreement, 12 of 49 chunks"),
                  ("vibi", "posthoc_accuracy", "VIBI post-hoc accuracy"),
                  ("invertible", "image_test_accuracy", "invertible classifier test accuracy"),
                  ("counterfactuals", "runner_up_im1_normalised", "normalised IM1, runner-up"))
BENCH_FP32 = {"before": "experiments/bench_fp32_before.json", "after": "experiments/bench_fp32.json"}
#: The same bench three times in a row on a second host, whose fp32 ceiling is near an AVX2 laptop's.
BENCH_FP32_REPEATS = [f"experiments/bench_fp32_epyc_{i}.json" for i in (1, 2, 3)]
BENCHES = {"The defaults (MNIST)": "experiments/bench.json",
           "The CIFAR-10 CPU setting, VIBI only": "experiments/bench_cifar_cpu.json",
           "airbench's black box (the CIFAR-10 airbench settings)":
               "experiments/bench_cifar_airbench.json"}


def _json(root: Path, name: str) -> dict:
    return json.loads((root / name).read_text())


def experiment_module(root: Path, name: str) -> ModuleType:
    """The script `experiments/<name>.py` under `root`, imported as a module."""
    spec = importlib.util.spec_from_file_location(name, root / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _interval(mean: float, low: float, high: float, fmt: str = ".3f") -> str:
    """`mean [low, high]`, every number in `fmt`."""
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _counterfactual_row(cf: dict) -> str:
    def ci(key: str, fmt: str) -> str:
        return _interval(cf[key], cf[key + "_low"], cf[key + "_high"], fmt)

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
        ("`train_invertible`", f"test accuracy {inv['image_test_accuracy']:.4f}; max "
                               f"reconstruction error "
                               f"{inv['image_max_reconstruction_error']:.1e}, max "
                               f"projection residual "
                               f"{inv['image_max_projection_residual']:.1e}; training "
                               f"{inv['image_train_bits_per_dim']:.2f} bits/dim"),
        ("`evaluate_counterfactuals`", _counterfactual_row(cf)),
    ]
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


def _runs_by_variant(root: Path, results: str) -> dict[str, list[dict]]:
    """The JSON lines of `experiments/vibi_variants.py` in `results`, grouped by variant in
    their order."""
    by_variant: dict[str, list[dict]] = {}
    for line in (root / results).read_text().splitlines():
        if line:
            run = json.loads(line)
            by_variant.setdefault(run["variant"], []).append(run)
    return by_variant


def variants_block(root: Path, results: str) -> str:
    """VIBI training variants (`experiments/vibi_variants.py` results in `results`): one row per
    variant, the mean over its seeds with the range when there are several."""
    by_variant = _runs_by_variant(root, results)

    def cell(rows: list[dict], key: str) -> str:
        values = [r[key] for r in rows]
        mean = sum(values) / len(values)
        return f"{mean:.3f}" if len(values) == 1 else \
            f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"

    lines = ["| variant | changes from the base | seeds | post-hoc accuracy (black box) | own "
             "approximator's agreement | class from mask position |", "|---|---|---|---|---|---|"]
    for name, rows in by_variant.items():
        changes = ", ".join(f"{k} {v}" for k, v in rows[0]["settings"].items())
        seeds = ", ".join(str(r["seed"]) for r in rows)
        lines.append(f"| {name} | {changes} | {seeds} | {cell(rows, 'posthoc_accuracy')} | "
                     f"{cell(rows, 'approximator_fidelity')} | {cell(rows, 'class_from_mask')} |")
    return "\n".join(lines)


def judged_variants_block(root: Path) -> str:
    """VIBI variants and reference methods measured as the evaluation measures
    (`experiments/vibi_variants.py --measure-images N --references ...`): one row per variant
    (mean over its seeds, with their range) or reference, and VIBI minus the reference with the
    highest judge fidelity, paired over images: the union of the seeds' 95 % intervals, and on
    how many seeds the interval excludes 0 on either side."""
    rows = _runs_by_variant(root, JUDGED_VARIANTS)
    refs = {name: rs[0] for name, rs in rows.items() if rs[0]["seed"] is None}
    keys = list(next(iter(rows.values()))[0]["measures"])
    fidelity = next(key for key in keys if key.startswith("fidelity_k"))
    best = max(refs, key=lambda name: refs[name]["measures"][fidelity][0])

    def cell(rs: list[dict], key: str) -> str:
        values = [r["measures"][key] for r in rs]
        if len(values) == 1:
            return _interval(*values[0])
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


def _stage_seconds(root: Path, run: dict, resumed_from: tuple[str, ...] = ()
                   ) -> tuple[dict, str]:
    """A run's seconds per stage and a sentence on how they were made: its own (no sentence), or
    for a run that resumed a kept run (`pipeline_timing.py --resume`), the stages it re-ran at
    its seconds and the others at those of the run it resumed, `resumed_from[0]` (composed in
    turn from `resumed_from[1:]` when that run resumed another): what the whole pipeline at its
    setting takes."""
    seconds, resumed = run["stage_seconds"], run.get("resumed")
    if resumed is None:
        return seconds, ""
    if not resumed_from:  # its kept stages' seconds are DVC's check alone: no total
        raise ValueError(f"a resumed run's block needs `resumed_from`: the run it resumed "
                         f"(from commit {resumed['from_commit'][:7]})")
    first, *earlier = resumed_from
    base, _ = _stage_seconds(root, _json(root, first), tuple(earlier))
    ran = resumed["stages_run"]
    composed = "".join(f", itself composed with `{path}`" for path in earlier)
    return ({s: seconds[s] if s in ran else base[s] for s in seconds},
            " The stages this run re-ran (" + ", ".join(f"`{s}`" for s in ran) + ") count at "
            f"its seconds, the others at those of the run it resumed (`{first}`{composed}).")


def stage_comparison_block(root: Path, results: str, baseline: str,
                           baseline_resumed_from: tuple[str, ...] = (),
                           metrics: bool = False) -> str:
    """Two runs' seconds stage by stage (`baseline` composed as `_stage_seconds` does), the ratio
    of each stage and of the totals, and the params in which the runs differ: what a setting's
    change saved and what the host's speed moved, side by side. With `metrics`, also which of
    the runs' metrics differ (a re-run of one setting: does it rebuild every number?)."""
    run, base = _json(root, results), _json(root, baseline)
    seconds, _ = _stage_seconds(root, run)
    before, _ = _stage_seconds(root, base, baseline_resumed_from)
    flat_run, flat_base = flatten(run["params"]), flatten(base["params"])
    changed = sorted(key for key in flat_run.keys() | flat_base.keys()
                     if flat_run.get(key) != flat_base.get(key) and key != "data.root")
    lines = [f"| stage | `{baseline}` | `{results}` | ratio |", "|---|---|---|---|"]
    for stage, t in seconds.items():
        lines.append(f"| `{stage}` | {before[stage]:.0f} | {t:.0f} | {t / before[stage]:.2f} |")
    total, total_before = sum(seconds.values()), sum(before.values())
    lines += [f"| all (minutes) | {total_before / 60:.1f} | {total / 60:.1f} | "
              f"{total / total_before:.2f} |", "",
              "Params that differ: " + (", ".join(
                  f"`{key}` {_shown(flat_base, key)} -> {_shown(flat_run, key)}"
                  for key in changed) or "none") + "."]
    if metrics:
        lines += ["", _metrics_compared(run["metrics"], base["metrics"])]
    return "\n".join(lines)


def _metrics_compared(run: dict, base: dict) -> str:
    """One sentence: how many metric values two runs share exactly, and the keys of the others."""
    flat_run, flat_base = flatten(run), flatten(base)
    keys = flat_run.keys() | flat_base.keys()
    differ = sorted(key for key in keys if flat_run.get(key) != flat_base.get(key))
    return (f"Metrics compared: {len(keys)} values in `metrics/*.json`, "
            f"{len(keys) - len(differ)} exactly equal"
            + (f"; differing: {', '.join(f'`{key}`' for key in differ)}." if differ else "."))


def _shown(params: dict[str, object], key: str) -> str:
    """A param's value as a table shows it, or `absent` where the run's params lacked the key."""
    return repr(params[key]) if key in params else "absent"


def cifar_cpu_block(root: Path, results: str = CIFAR_CPU, resumed_from: tuple[str, ...] = ()
                    ) -> str:
    """A CIFAR-10 setting's whole-pipeline run (`experiments/pipeline_timing.py`): wall seconds
    per stage (for a resumed run, as `_stage_seconds` composes them), then every method's
    post-hoc accuracy and judge fidelity at `vibi.k` (also with ROAD's fill where the run
    measured it); sorted by post-hoc accuracy, or by the judge's fidelity with ROAD's fill where
    there is one (it favours no method by construction)."""
    run = _json(root, results)
    m, params = run["metrics"], run["params"]
    seconds, made = _stage_seconds(root, run, resumed_from)
    v = params["vibi"]
    k = v["k"]
    posthoc = f"posthoc_accuracy_k{k}"
    columns = _headline_columns(params)
    summary = (f"On {run['host']['cores']} cores of an {run['host']['cpu']}: "
               f"{sum(seconds.values()) / 60:.1f} min in all ({v['l2x_epochs']} epochs of L2X, "
               f"{v['epochs']} of VIBI"
               f"{' started from that L2X' if v.get('jump_start') else ''}, "
               f"{params['judge']['epochs']} of the judge, "
               f"{params['evaluate']['num_images']} evaluation images); black box test accuracy "
               f"{m['blackbox']['test_accuracy']:.4f}; VIBI's post-hoc accuracy at k = {k} "
               f"({_chunks(_chunk_size(params), k)}) on "
               f"the test set {m['vibi']['posthoc_accuracy']:.3f} "
               f"(L2X {m['l2x']['posthoc_accuracy']:.3f})." + made)
    header = (f"| method (evaluation, {params['evaluate']['num_images']} test images) | "
              "explains | " + " | ".join(columns) + " |")
    lines = [summary, "",
             "| stage | " + " | ".join(f"`{s}`" for s in seconds) + " |",
             "|---|" + "---|" * len(seconds),
             "| seconds | " + " | ".join(f"{t:.0f}" for t in seconds.values()) + " |", "",
             construction_note(v["objective"], k, v.get("fill", "zero")), "",
             header, "|---|---|" + "---|" * len(columns)]
    methods = m["evaluation"]["methods"]
    road_fidelity = f"fidelity_road_k{k}"
    order = road_fidelity if road_fidelity in columns else posthoc
    for name, row in sorted(methods.items(), key=lambda item: -item[1][order]):
        lines.append(f"| {name} | {row['explains']} | "
                     + " | ".join(interval_cell(row, c) for c in columns) + " |")
    return "\n".join(lines)


def _headline_columns(params: dict) -> list[str]:
    """A CIFAR-10 run's post-hoc accuracy and judge fidelity at `vibi.k`, and the same with ROAD's
    fill where its evaluation measured them (`evaluate.road_budgets`)."""
    k = params["vibi"]["k"]
    fills = ("", "_road") if params["evaluate"].get("road_budgets", False) else ("",)
    return [f"{measure}{fill}_k{k}" for fill in fills
            for measure in ("posthoc_accuracy", "fidelity")]


def cifar_probes_block(root: Path, results: str = CIFAR_PROBES) -> str:
    """`experiments/cifar_probes.py`'s output: the black box with test-time augmentation, and the
    judge's agreement by budget for the run's judge and each variant (with its training seconds
    where the file has them)."""
    run = _json(root, results)
    views = {"none": "the image alone", "mirror": "the image and its mirror (2 passes)",
             "airbench": "airbench's six views (6 passes)"}
    lines = [f"On {_host(run['host'])}, {run['test_images']:,} test images, 95 % intervals:", "",
             "| black box answers from | test accuracy |", "|---|---|"]
    lines += [f"| {views[v]} | {_interval(*ci)} |" for v, ci in run["blackbox_accuracy"].items()]
    rows = run["judge_agreement"]
    budgets = [b for b in next(iter(rows.values())) if b.startswith("k")]
    timed = any("train_seconds" in row for row in rows.values())
    lines += ["", "| judge | " + " | ".join(f"agreement, {b.removeprefix('k')} pixels kept"
                                           for b in budgets)
              + (" | training seconds |" if timed else " |"),
              "|---|" + "---|" * (len(budgets) + timed)]
    for name, row in rows.items():
        seconds = f" {row['train_seconds']:.0f} |" if "train_seconds" in row else " |"
        lines.append(f"| {name} | " + " | ".join(_interval(*row[b]) for b in budgets) + " |"
                     + (seconds if timed else ""))
    return "\n".join(lines)


def cifar_vibi_published_block(root: Path) -> str:
    """`experiments/cifar_vibi_published.json`: VIBI trained with the published objective, its
    approximator's agreement with the black box against the black box's own on the same pixels."""
    run = _json(root, CIFAR_VIBI_PUBLISHED)
    v, history = run["vibi"], run["history"]
    return "\n".join([
        f"On {_host(run['host'])}, {len(history)} epochs ({run['train_seconds']:.0f} s), k = "
        f"{v['k']} of {v['num_chunks']} pixels, test set: the approximator agrees with the black "
        f"box on {v['approximator_fidelity']:.3f} of the images; the black box itself, shown the "
        f"same {v['k']} pixels (the rest 0), keeps its prediction on "
        f"{v['posthoc_accuracy']:.3f}.", "",
        "| epoch | " + " | ".join(str(row["epoch"]) for row in history) + " |",
        "|---|" + "---|" * len(history),
        "| approximator's agreement, validation | "
        + " | ".join(f"{row['val_approximator_fidelity']:.3f}" for row in history) + " |"])


def cifar_fidelity_block(root: Path, results: str = CIFAR_FIDELITY) -> str:
    """`experiments/cifar_fidelity_probe.py`'s output: per judge (and the black box itself, when
    measured) and per fill of the removed pixels, random chunks' agreement with the black box and
    every method minus random, by budget, paired 95 % intervals over the images."""
    run = _json(root, results)
    c = run["chunk"]
    fills = {"": "the removed pixels 0", "_road": "the removed pixels ROAD-imputed"}

    def kept(budget: str) -> str:
        return f"{_chunks(c, int(budget.removeprefix('k')))} kept"

    def table(title: str, by_budget: dict, measure: str) -> list[str]:
        budgets = list(by_budget)
        methods = [m for m in by_budget[budgets[0]] if m != "random"]
        return ["", title, "",
                "| | " + " | ".join(kept(b) for b in budgets) + " |",
                "|---|" + "---|" * len(budgets),
                f"| random chunks, {measure} | " + " | ".join(
                    _interval(*by_budget[b]["random"][measure]) for b in budgets) + " |",
                *(f"| {m} minus random | " + " | ".join(
                    _interval(*by_budget[b][m]["minus_random"], fmt="+.3f") for b in budgets)
                  + " |" for m in methods)]

    lines = [f"The run at workspace commit `{run['workspace_commit'][:7]}`, on "
             f"{_host(run['host'])}; {run['images']:,} test images, "
             f"{'single pixels' if c == 1 else f'{c}x{c}-pixel chunks'}, LIME "
             f"and KernelSHAP with {run['samples']} samples; how often random chunks keep the "
             "black box's prediction, as the judge (fidelity) or the black box itself (post-hoc "
             "accuracy) reads them, and each method minus random (paired 95 % intervals over the "
             "images):"]
    if run.get("vibi_fill", "zero") != "zero":
        r = run["run"]
        lines[0] = (f"VIBI and L2X trained with the removed pixels filled `{run['vibi_fill']}` "
                    f"({r['train_seconds']['vibi']:.0f} s and {r['train_seconds']['l2x']:.0f} s); "
                    "the black box, shown their pixels so filled, keeps its prediction on "
                    f"{r['posthoc_accuracy']['vibi']:.3f} and {r['posthoc_accuracy']['l2x']:.3f} "
                    "of the test images (as their stage measures it). " + lines[0])
    for suffix, fill in fills.items():
        for judge, by_budget in run.get(f"fidelity{suffix}", {}).items():
            lines += table(f"Judge: {judge}; {fill}.", by_budget, "fidelity")
    for suffix, fill in fills.items():
        if f"posthoc{suffix}" in run:
            lines += table(f"The black box itself; {fill}.", run[f"posthoc{suffix}"], "accuracy")
    return "\n".join(lines)


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


def cifar_airbench_block(root: Path, results: str = CIFAR_AIRBENCH,
                         resumed_from: tuple[str, ...] = ()) -> str:
    """A CIFAR-10 airbench setting's pipeline run: the black box, the judge's agreement with it
    by budget, the stage seconds and the methods' table (as `cifar_cpu_block`, `resumed_from`
    as there), and every method's paired difference to VIBI at `vibi.k`."""
    run = _json(root, results)
    m, params = run["metrics"], run["params"]
    judge, c = m["judge"], _chunk_size(params)
    d = int(judge["num_chunks"])
    budgets = sorted(int(key.rsplit("_k", 1)[1]) for key in judge
                     if key.startswith("test_agreement_k"))
    lines = [f"Run at commit `{run['commit'][:7]}`. The judge's agreement with the black box on "
             f"random subsets of the test images ({params['judge']['epochs']} epochs"
             f"{', mirrored' if params['judge'].get('mirror') else ''}; of "
             f"{_chunks(c, d)}):", "",
             f"| kept {_chunks(c)} | " + " | ".join(str(b) for b in budgets) + " |",
             "|---|" + "---|" * len(budgets),
             "| 0-filled | " + " | ".join(f"{judge[f'test_agreement_k{b}']:.3f}"
                                         for b in budgets) + " |",
             "| ROAD-imputed | " + " | ".join(f"{judge[f'test_agreement_imputed_k{b}']:.3f}"
                                             for b in budgets) + " |", "",
             cifar_cpu_block(root, results, resumed_from)]
    k = params["vibi"]["k"]
    for fidelity in (col for col in _headline_columns(params) if col.startswith("fidelity")):
        lines += ["", f"VIBI minus each method, {fidelity} ({_chunks(c, k)}), paired 95 % "
                  "interval over the same images:", "", "| method | difference | interval |",
                  "|---|---|---|"]
        for name, row in sorted(m["evaluation_differences"].items(),
                                key=lambda item: -item[1][fidelity]["difference"]):
            cell = row[fidelity]
            lines.append(f"| {name} | {cell['difference']:+.3f} | [{cell['ci_low']:+.3f}, "
                         f"{cell['ci_high']:+.3f}] |")
    return "\n".join(lines)


def cifar_gain_block(root: Path, results: str = CIFAR_GAIN_PIPELINE) -> str:
    """A CIFAR-10 run's gains over random chunks (`evaluate.random_draws`): every method's judge
    fidelity minus random chunks' expected fidelity on the same image, at `vibi.k` and at a
    quarter of the image, each fill, best first by the gain at `vibi.k` (ROAD's fill where
    measured, as the run's table sorts); with the stages a resumed run re-ran and their seconds."""
    run = _json(root, results)
    params, rows = run["params"], run["metrics"]["evaluation"]["methods"]
    c, k, draws = _chunk_size(params), params["vibi"]["k"], params["evaluate"]["random_draws"]
    quarter = int(run["metrics"]["judge"]["num_chunks"]) // 4
    fills = ("_road", "") if params["evaluate"].get("road_budgets", False) else ("",)
    gains = [(f"fidelity{fill}_over_random_k{b}", b, fill) for b in (k, quarter)
             for fill in fills]
    ran = f"Run at commit `{run['commit'][:7]}`"
    if resumed := run.get("resumed"):
        ran += (f", resuming the run made at commit `{resumed['from_commit'][:7]}`: only "
                + ", ".join(f"`{s}` ({run['stage_seconds'][s]:.0f} s)"
                            for s in resumed["stages_run"]) + " ran again")
    lines = [ran + f"; {len(rows)} methods on "
             f"{params['evaluate']['num_images']} test images, random chunks' expected fidelity "
             f"from {draws} draws per image. Random chunks' expected fidelity (mean over the "
             "images): " + ", ".join(
                 f"{_chunks(c, b)}{' ROAD fill' if fill else ' 0-filled'} "
                 f"{rows['random'][f'fidelity{fill}_k{b}'] - rows['random'][key]:.3f}"
                 for key, b, fill in gains) + ".", "",
             "Each method's judge fidelity minus random chunks' expected fidelity on the same "
             "image; mean [95 % interval over images]:", "",
             "| method | " + " | ".join(f"{_chunks(c, b)}, {'ROAD fill' if fill else '0-filled'}"
                                      for _, b, fill in gains) + " |",
             "|---|" + "---|" * len(gains)]
    for name, row in sorted(rows.items(), key=lambda item: -item[1][gains[0][0]]):
        lines.append(f"| {name} | " + " | ".join(interval_cell(row, key, signed=True)
                                                  for key, _, _ in gains) + " |")
    return "\n".join(lines)


def bench_block(root: Path) -> str:
    """`python -m xai.pipeline.bench --out ...` runs (`BENCHES`): one table per params file."""
    lines = []
    for title, name in BENCHES.items():
        run = _json(root, name)
        ceiling = ", ".join(f"{k} {v:.0f}" for k, v in run["ceiling_gflops"].items())
        gemms = any(c.get("gemm_share_of_ceiling") is not None for c in run["cases"])
        lines += [f"{title} (`{name}`; {run['device']}, {run['threads']} threads; matmul ceiling "
                  f"GFLOP/s: {ceiling}):", "",
                  "| case | batch | precision | img/s | MFLOP/img | GFLOP/s | of ceiling |"
                  + (" its GEMMs alone | time in GEMMs |" if gemms else ""),
                  "|---|---|---|---|---|---|---|" + ("---|---|" if gemms else "")]
        lines += [f"| {c['name']} | {c['batch']} | {c['precision']} | "
                  f"{c['images_per_second']:.0f} | {c['mflop_per_image']:.3g} | "
                  f"{c['gflops']:.1f} | {c['share_of_ceiling']:.0%} |"
                  + (f" {percent(c.get('gemm_share_of_ceiling'))} | "
                     f"{percent(c.get('gemm_time_share'))} |" if gemms else "")
                  for c in run["cases"]]
        lines.append("")
    return "\n".join(lines[:-1])


def _host(host: dict) -> str:
    """A run's host as the tables name it: CPU, cores and the instruction sets recorded."""
    flags = ", ".join(host.get("flags", [])) or "flags not recorded"
    return f"{host['cpu']}, {host['cores']} cores ({flags})"


def _one_host(runs: list[dict], names: list[str]) -> str:
    """The host that ran every one of `runs` (files `names`), as `_host` names it; runs from
    several kinds of host cannot be read as one host's spread."""
    hosts = {_host(run["host"]) for run in runs}
    if len(hosts) != 1:
        raise ValueError(f"{', '.join(names)} come from more than one host: {hosts}")
    return hosts.pop()


def bench_fp32_block(root: Path) -> str:
    """The bench with `XAI_CPU_BF16=0` before and after a change (`BENCH_FP32`): each case's share
    of the fp32 ceiling, with the host's instruction sets."""
    before, after = (_json(root, BENCH_FP32[k]) for k in ("before", "after"))
    host = after["host"]
    shares = {c["name"]: c["share_of_ceiling"] for c in before["cases"]}
    lines = [f"{_host(host)}, {after['threads']} threads; fp32 matmul ceiling "
             f"{after['ceiling_gflops']['fp32']:.0f} GFLOP/s:", "",
             "| case | batch | img/s | GFLOP/s | of ceiling before | of ceiling after | "
             "its GEMMs alone | time in GEMMs |",
             "|---|---|---|---|---|---|---|---|"]
    for c in after["cases"]:
        if c["mflop_per_image"] == 0:
            continue  # no counted FLOPs: no share of a ceiling
        lines.append(f"| {c['name']} | {c['batch']} | {c['images_per_second']:.0f} | "
                     f"{c['gflops']:.1f} | {shares[c['name']]:.0%} | "
                     f"{c['share_of_ceiling']:.0%} | {percent(c.get('gemm_share_of_ceiling'))} | "
                     f"{percent(c.get('gemm_time_share'))} |")
    return "\n".join(lines)


def bench_fp32_repeats_block(root: Path) -> str:
    """`BENCH_FP32_REPEATS`: each case's share of the fp32 ceiling and its GEMMs' share, run by
    run, so the spread between runs on one host is read beside the shares."""
    runs = [_json(root, path) for path in BENCH_FP32_REPEATS]
    ceilings = " / ".join(f"{run['ceiling_gflops']['fp32']:.0f}" for run in runs)
    lines = [f"{_one_host(runs, BENCH_FP32_REPEATS)}, {runs[0]['threads']} threads; fp32 matmul ceiling {ceilings} "
             f"GFLOP/s in runs {' / '.join(str(i) for i in range(1, len(runs) + 1))}:", "",
             "| case | batch | of ceiling, run by run | its GEMMs alone, run by run |",
             "|---|---|---|---|"]
    for i, case in enumerate(runs[0]["cases"]):
        if case["mflop_per_image"] == 0:
            continue  # no counted FLOPs: no share of a ceiling
        cases = [run["cases"][i] for run in runs]
        lines.append(f"| {case['name']} | {case['batch']} | "
                     f"{' / '.join(percent(c['share_of_ceiling']) for c in cases)} | "
                     f"{' / '.join(percent(c.get('gemm_share_of_ceiling')) for c in cases)} |")
    return "\n".join(lines)


def bench_sessions_block(root: Path, runs: dict[str, str]) -> str:
    """One bench command's runs on one kind of host in several sessions (`runs`: what each was,
    its file): the matmul ceilings and each case's images per second, so a pipeline's seconds
    can be read beside the speed its session's host had."""
    benches = {title: _json(root, path) for title, path in runs.items()}
    cases = [c["name"] for c in next(iter(benches.values()))["cases"]]
    lines = [f"{_one_host(list(benches.values()), list(runs.values()))}:", "",
             "| run | bf16 ceiling GFLOP/s | fp32 ceiling GFLOP/s | "
             + " | ".join(f"{name}, img/s" for name in cases) + " |",
             "|---|---|---|" + "---|" * len(cases)]
    for title, run in benches.items():
        speed = {c["name"]: c["images_per_second"] for c in run["cases"]}
        lines.append(f"| {title} (`{runs[title]}`) | {run['ceiling_gflops']['bf16']:.0f} | "
                     f"{run['ceiling_gflops']['fp32']:.0f} | "
                     + " | ".join(f"{speed[name]:.0f}" for name in cases) + " |")
    return "\n".join(lines)


def counterfactual_sweep_block(root: Path) -> str:
    """`experiments/counterfactual_sweep.jsonl`: the image flow's counterfactuals by direction and
    margin on validation images, each measure with its 95 % interval."""
    runs = [json.loads(line) for line in
            (root / "experiments/counterfactual_sweep.jsonl").read_text().splitlines() if line]

    lines = ["| direction | margin | validity (black box) | pixels out of range | bits/dim minus "
             "the real images' | L1 |", "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['direction']} | {r['margin']:g} | {_interval(*r['validity'])} | "
                     f"{_interval(*r['out_of_range'], '.4f')} | "
                     f"{_interval(*r['bits_per_dim_gap'], '+.2f')} | "
                     f"{_interval(*r['l1'], '.1f')} |")
    return "\n".join(lines)


#: Hvilshoj, Iosifidis and Assent (2021), "On Quantitative Evaluations of Counterfactuals",
#: MNIST, about 10,000 counterfactuals per method: IM1, IM2, FID, oracle validity.
PUBLISHED_COUNTERFACTUALS = (("gradient-based", 0.994, 0.0055, 50.2, 0.734),
                             ("GL", 0.993, 0.0053, 308.4, 0.377),
                             ("generative (GEN)", 0.884, 0.0017, 90.7, 0.931))


_MEASURES_HEADER = [("| counterfactuals | IM1 | normalised IM1 | IM2 | FID (vs inputs) | FID (vs "
                     "real target-class images) | oracle validity | black-box validity | pixels "
                     "out of range | L1 | images |"), "|---|---|---|---|---|---|---|---|---|---|---|"]


def _measures_rows(cf: dict) -> list[str]:
    """The rows of `evaluate_counterfactuals`' literature measures in `cf`: runner-up crossings,
    crossings to the named target where measured, each beside its two reference rows."""
    def ci(key: str, fmt: str) -> str:
        return _interval(cf[key], cf[key + "_low"], cf[key + "_high"], fmt)

    target = cf.get("target_class")
    groups = [("runner_up", "runner-up crossings")]
    if target is not None:
        groups.append(("target", f"crossings to class {target:g}"))
    lines = []
    for prefix, title in groups:
        for row, label in ((prefix, f"this project: {title}"),
                           (f"{prefix}_real", (f"reference: real test images of the target "
                                               f"class ({title})")),
                           (f"{prefix}_unchanged", f"reference: the unchanged input ({title})")):
            normalised = ci(f"{prefix}_im1_normalised", ".2f") if row == prefix else ""
            lines.append(
                f"| {label} | {ci(row + '_im1', '.3f')} | {normalised} | "
                f"{ci(row + '_im2', '.4f')} | {ci(row + '_fid', '.1f')} | "
                f"{ci(row + '_fid_real', '.1f')} | {ci(row + '_oracle_validity', '.3f')} | "
                f"{ci(row + '_blackbox_validity', '.3f')} | {ci(row + '_out_of_range', '.4f')} | "
                f"{ci(row + '_l1', '.1f')} | {cf[prefix + '_images']:,.0f} |")
    return lines


def counterfactual_measures_block(root: Path) -> str:
    """`metrics/counterfactuals.json`'s literature measures (IM1, IM2, FID, oracle validity, with
    the normalised IM1 and the reference rows), for the runner-up crossings and the crossings to
    the named target, beside the published MNIST rows."""
    lines = list(_MEASURES_HEADER)
    for name, im1, im2, fid, oracle in PUBLISHED_COUNTERFACTUALS:
        lines.append(f"| published: {name} | {im1:.3f} | | {im2:.4f} | {fid:.1f} | | "
                     f"{oracle:.3f} | | | | ~10,000 |")
    return "\n".join(lines + _measures_rows(_json(root, "metrics/counterfactuals.json")))


def fashion_counterfactuals_block(root: Path) -> str:
    """`experiments/fashion_counterfactuals.json`: the same measures on Fashion-MNIST at the
    defaults, with the accuracies of the models they come from."""
    run = _json(root, "experiments/fashion_counterfactuals.json")
    m = run["metrics"]
    return "\n".join([
        (f"Fashion-MNIST at the defaults (`experiments/fashion_counterfactuals.py`, commit "
        f"`{run['commit'][:7]}`): black box test accuracy {m['blackbox']['test_accuracy']:.4f}, "
        f"invertible classifier {m['invertible']['image_test_accuracy']:.4f}, oracle "
        f"{m['measurement']['oracle_accuracy']:.4f} on validation images."), "",
        *_MEASURES_HEADER, *_measures_rows(m["counterfactuals"])])


def counterfactual_measures_sweep_block(root: Path) -> str:
    """`experiments/counterfactual_measures_sweep.jsonl`: the literature's measures by direction
    and margin on validation images."""
    path = root / "experiments/counterfactual_measures_sweep.jsonl"
    runs = [json.loads(line) for line in path.read_text().splitlines() if line]
    pick = experiment_module(root, "counterfactual_measures_sweep").chosen(runs)
    lines = [("| direction | neighbours | margin | normalised IM1 | oracle validity | "
              "black-box validity | pixels out of range | L1 | "
              "FID (vs real target-class images) |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        name = f"**{r['direction']} (chosen)**" if r is pick else r["direction"]
        lines.append(f"| {name} | {r.get('neighbours', '')} | {r['margin']:g} | "
                     f"{_interval(*r['im1_normalised'], '.2f')} | "
                     f"{_interval(*r['oracle_validity'])} | {_interval(*r['blackbox_validity'])} | "
                     f"{_interval(*r['out_of_range'], '.4f')} | {_interval(*r['l1'], '.1f')} | "
                     f"{_interval(*r['fid_real'], '.1f')} |")
    return "\n".join(lines)


def reliability_block(root: Path) -> str:
    """`experiments/reliability.json` (`experiments/reliability.py`): cases tried per test."""
    results = _json(root, "experiments/reliability.json")
    lines = ["| test | cases tried | failures |", "|---|---|---|"]
    for t in results["tests"]:
        lines.append(f"| `{t['file']}::{t['test']}` | {t['cases']} | {t['failures']} |")
    lines.append(f"| all | {results['cases']} | {results['failures']} |")
    return "\n".join(lines)


def scaling_block(root: Path) -> str:
    """`experiments/scaling.json` (`experiments/scaling.py`): seconds per step of every main step
    at the defaults, and the exponents of its time and of its FLOPs as the images per step, the
    pixels per image and VIBI's k grow; a time exponent above 1.1 is marked super-linear."""
    results = _json(root, "experiments/scaling.json")
    axes, growth = results["axes"], results["exponents"]
    sides = sorted(axes["size"], key=int)  # the file's keys are sorted as text
    lines = [f"{_host(results['host'])}, {results['threads']} threads. Seconds per step at the "
             "defaults; cost ~ x^e for x = images per step (x1, x2, x4), pixels per image "
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


def hosts_block(root: Path) -> str:
    """What the default pipeline takes by kind of host: the committed `auto` run
    (`experiments/default_pipeline.json`), the same host with every precision forced to fp32
    (`experiments/fp32_pipeline.json`, what `auto` runs on a CPU without native bf16), and
    `auto` runs on other kinds of host (`OTHER_HOST_PIPELINES`) with their headline metrics beside
    the committed run's; a GPU is unverified until a run on one is committed."""
    auto, fp32 = _json(root, "experiments/default_pipeline.json"), _json(root, FP32_PIPELINE)
    host = auto["host"]
    if fp32["host"] != host:
        raise ValueError(f"{FP32_PIPELINE} ran on {fp32['host']}, the default run on {host}: "
                         "compare them from one machine")
    minutes = auto["total_seconds"] / 60, fp32["total_seconds"] / 60
    others = [_json(root, path) for path in OTHER_HOST_PIPELINES]
    lines = ["| host | precision | the default pipeline, end to end |", "|---|---|---|",
             f"| {_host(host)} | `auto`: bf16 | {minutes[0]:.1f} min |",
             f"| the same host, as one without native bf16 runs it | fp32 (forced) | "
             f"{minutes[1]:.1f} min ({minutes[1] / minutes[0]:.2f}x) |"]
    lines += [f"| {_host(run['host'])} | `auto`: "
              f"{'bf16' if NATIVE_BF16_FLAGS & set(run['host']['flags']) else 'fp32'} | "
              f"{run['total_seconds'] / 60:.1f} min |" for run in others]
    lines.append("| a CUDA GPU | `auto`: bf16 | unverified: no GPU run is committed |")
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


def shared_cores_block(root: Path) -> str:
    """`experiments/shared_cores.json` (`experiments/shared_cores.py`): the evaluate stage's
    seconds alone and beside a busy 2-thread torch job, per code version."""
    results = _json(root, "experiments/shared_cores.json")
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
        cell = _interval(*(methods[name][k] for k in
                           ("encoding", "encoding_ci_low", "encoding_ci_high")), fmt="+.3f")
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


BLOCKS: dict[str, Callable[[Path], str]] = {
    "stages": stages_block, "evaluation-headline": evaluation_headline_block,
    "evaluation-cost": evaluation_cost_block, "evaluation-encoding": evaluation_encoding_block,
    "evaluation": evaluation_block,
    "reliability": reliability_block, "cifar-cpu": cifar_cpu_block, "bench": bench_block,
    "scaling": scaling_block, "shared-cores": shared_cores_block, "hosts": hosts_block,
    "bench-fp32": bench_fp32_block,
    "bench-fp32-repeats": bench_fp32_repeats_block,
    "cifar-airbench": cifar_airbench_block,
    "cifar-airbench-chunk2": functools.partial(cifar_airbench_block, results=CIFAR_CHUNK2),
    "cifar-airbench-smooth": functools.partial(cifar_airbench_block,
                                               results=CIFAR_SMOOTH_PIPELINE),
    "cifar-airbench-mirror": functools.partial(cifar_airbench_block,
                                               results=CIFAR_MIRROR_PIPELINE),
    "cifar-airbench-gain": cifar_gain_block,
    "cifar-airbench-gain1000": functools.partial(cifar_gain_block,
                                                 results=CIFAR_GAIN1000_PIPELINE),
    "cifar-airbench-gain-clean": functools.partial(cifar_airbench_block,
                                                   results=CIFAR_GAIN_CLEAN_PIPELINE),
    "cifar-airbench-gain-amx": functools.partial(cifar_airbench_block,
                                                 results=CIFAR_GAIN_AMX_PIPELINE),
    "cifar-airbench-gain-amx-gains": functools.partial(cifar_gain_block,
                                                       results=CIFAR_GAIN_AMX_PIPELINE),
    "cifar-airbench-gain1000-amx": functools.partial(cifar_gain_block,
                                                     results=CIFAR_GAIN1000_AMX_PIPELINE),
    "cifar-airbench-wide": functools.partial(cifar_airbench_block, results=CIFAR_WIDE_PIPELINE,
                                             resumed_from=(CIFAR_GAIN_AMX_PIPELINE,)),
    "cifar-airbench-wide-gains": functools.partial(cifar_gain_block,
                                                   results=CIFAR_WIDE_PIPELINE),
    "cifar-airbench-jump": functools.partial(
        cifar_airbench_block, results=CIFAR_JUMP_PIPELINE,
        resumed_from=(CIFAR_WIDE_PIPELINE, CIFAR_GAIN_AMX_PIPELINE)),
    "cifar-airbench-jump-gains": functools.partial(cifar_gain_block,
                                                   results=CIFAR_JUMP_PIPELINE),
    "cifar-airbench-jump1000": functools.partial(cifar_gain_block,
                                                 results=CIFAR_JUMP1000_PIPELINE),
    "cifar-airbench-tau2": functools.partial(
        cifar_airbench_block, results=CIFAR_TAU2_PIPELINE,
        resumed_from=CIFAR_TAU2_RESUMED_FROM),
    "cifar-airbench-tau2-gains": functools.partial(cifar_gain_block,
                                                   results=CIFAR_TAU2_PIPELINE),
    "cifar-airbench-tau2-1000": functools.partial(cifar_gain_block,
                                                  results=CIFAR_TAU2_1000_PIPELINE),
    "cifar-airbench-hour": functools.partial(cifar_airbench_block, results=CIFAR_HOUR_PIPELINE),
    "cifar-airbench-hour-gains": functools.partial(cifar_gain_block,
                                                   results=CIFAR_HOUR_PIPELINE),
    "cifar-airbench-hour-stages": functools.partial(
        stage_comparison_block, results=CIFAR_HOUR_PIPELINE, baseline=CIFAR_TAU2_PIPELINE,
        baseline_resumed_from=CIFAR_TAU2_RESUMED_FROM),
    "cifar-airbench-hour-rerun-stages": functools.partial(
        stage_comparison_block, results=CIFAR_HOUR_RERUN_PIPELINE, baseline=CIFAR_HOUR_PIPELINE,
        metrics=True),
    "cifar-airbench-sessions": functools.partial(bench_sessions_block,
                                                 runs=CIFAR_AIRBENCH_SESSIONS),
    "cifar-probes": cifar_probes_block,
    "cifar-judge-budgets": functools.partial(cifar_probes_block, results=CIFAR_JUDGE_BUDGETS),
    "cifar-judge-lr": functools.partial(cifar_probes_block, results=CIFAR_JUDGE_LR),
    "cifar-judge-epochs": functools.partial(cifar_probes_block, results=CIFAR_JUDGE_EPOCHS),
    "cifar-vibi-published": cifar_vibi_published_block,
    "cifar-fidelity": cifar_fidelity_block,
    "cifar-smooth": lambda root: cifar_fidelity_block(root, CIFAR_SMOOTH),
    "cifar-smooth-run": lambda root: cifar_fidelity_block(root, CIFAR_SMOOTH_RUN),
    "cifar-mirror-run": lambda root: cifar_fidelity_block(root, CIFAR_MIRROR_RUN),
    "vibi-variants-judged": judged_variants_block,
    "counterfactual-sweep": counterfactual_sweep_block,
    "counterfactual-measures": counterfactual_measures_block,
    "counterfactual-measures-sweep": counterfactual_measures_sweep_block,
    "counterfactual-measures-fashion": fashion_counterfactuals_block,
    **{name: functools.partial(variants_block, results=path) for name, path in VARIANTS.items()}}

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



# ----------------------------------------------------------------------------- serving (issue 53)
# The served explainer (docs/serving.md): `experiments/serving_bench.py`'s record. A section of its
# own, registered into BLOCKS here.

SERVING_BENCH = "experiments/serving_bench.json"
#: The benchmark's cases as the table names them.
SERVING_CASES = {"batch_1_json": "batch 1, JSON", "batch_1_csv": "batch 1, CSV row",
                 "batch_64_json": "batch 64, JSON", "batch_64_csv": "batch 64, CSV rows"}
SERVING_GOALS = {"batch_64_per_second": 1000, "batch_1_p99_ms": 50}
SERVING_COMPARED = {"vibi": "VIBI", "integrated_gradients": "integrated gradients",
                    "kernel_shap": "KernelSHAP"}


def _served_row(name: str, case: dict) -> str:
    latency = case["latency_ms"]
    return (f"| {name} | {case['clients']} | {case['requests']} | "
            f"{case['explanations_per_second']:,.0f} | {latency['p50']:.1f} ms | "
            f"{latency['p99']:.1f} ms | {case['errors']} |")


def serving_bench_block(root: Path) -> str:
    """The served explainer's rates and latencies beside the same program in-process and the
    evaluation's in-process cost of the compared methods, with the goals met or not."""
    run = _json(root, SERVING_BENCH)
    served, inside = run["served"], run["in_process"]["explanations_per_second"]
    load = served["load_test"]
    clients = ("the same cores" if run["host"]["cores"] <= len(run["server_cores"].split(","))
               else "the others")
    lines = [f"`{run['model']}` served by `mlflow models serve` with {run['workers']} workers "
             f"pinned to cores {run['server_cores']} of {_host(run['host'])}, the clients on "
             f"{clients}; load average {run['load_average_before'][0]:.1f} before, "
             f"{run['load_average_after'][0]:.1f} after (`{SERVING_BENCH}`).", "",
             "| case | clients | requests | explanations/s | p50 latency | p99 latency | errors |",
             "|---|---|---|---|---|---|---|"]
    lines += [_served_row(label, served[key]) for key, label in SERVING_CASES.items()]
    load_row = {**load, "explanations_per_second": load["requests_per_second"]}
    lines.append(_served_row("load test: batch 1, JSON, every answer checked", load_row))
    b64 = max(served["batch_64_json"]["explanations_per_second"],
              served["batch_64_csv"]["explanations_per_second"])
    p99 = served["batch_1_json"]["latency_ms"]["p99"]
    met = {True: "met", False: "not met"}
    lines += ["", f"Goals on 2 cores: at least {SERVING_GOALS['batch_64_per_second']:,} "
              f"explanations/s at batch 64: {met[b64 >= SERVING_GOALS['batch_64_per_second']]} "
              f"({b64:,.0f}); p99 under {SERVING_GOALS['batch_1_p99_ms']} ms at batch 1: "
              f"{met[p99 < SERVING_GOALS['batch_1_p99_ms']]} ({p99:.1f} ms). The load test ended "
              f"with {load['errors']} errors and the server "
              f"{'still answering' if load.get('answering_after') else 'not answering'}.", ""]
    sizes, work = run["request_bytes"], run["server_work_ms"]
    json64 = served["batch_64_json"]["explanations_per_second"]
    steps = work["batch_64_json"]
    largest = max(steps, key=steps.get)
    lines += [f"In-process on one thread, the served program explains {inside['batch_1']:,.0f} "
              f"images/s one at a time and {inside['batch_64']:,.0f} images/s in batches of 64; "
              f"served, the batches of 64 come at {json64 / inside['batch_64']:.0%} of that. What "
              "the scoring server does with one request of 64 images, step by step on one thread "
              "(milliseconds):", "",
              "| body | size | parse | predict | write the answer |", "|---|---|---|---|---|"]
    for key, form in (("batch_64_json", "JSON"), ("batch_64_csv", "CSV rows")):
        row = work[key]
        lines.append(f"| {form} | {sizes[key] / 1e6:.2f} MB | {row['parse']:.1f} | "
                     f"{row['predict']:.1f} | {row['write']:.1f} |")
    lines += ["", f"The largest step of a JSON request is `{largest}`"
              + (" (MLflow reads the JSON body into nested lists, copies them and makes an array "
                 "of them): the JSON input is the bound of the server's own work; CSV rows "
                 f"parse in {work['batch_64_csv']['parse'] / steps['parse']:.0%} of its time"
                 if largest == "parse" else "") + ".", ""]
    costs = run["evaluation_seconds_per_image"]
    lines += [f"Served at batch 64, the explainer's {json64:,.0f} explanations/s are "
              f"{json64 * costs['integrated_gradients']:.0f}x integrated gradients' and "
              f"{json64 * costs['kernel_shap']:.0f}x KernelSHAP's in-process rates, as "
              "`timings/evaluate.json` (the committed evaluation's host) has them:", "",
              "| method | seconds per image in-process | explanations/s in-process |",
              "|---|---|---|"]
    for key, name in SERVING_COMPARED.items():
        lines.append(f"| {name} | {costs[key]:.2e} | {1 / costs[key]:,.0f} |")
    lines += ["", "Logging the explainer as an MLflow Model in its training stage (export, save, "
              "log, register) took " + ", ".join(
                  f"{seconds:.1f} s in `{stage}`"
                  for stage, seconds in run["model_log_seconds"].items())
              + " on the run that trained the served models."]
    return "\n".join(lines)


def serving_answer_block(root: Path) -> str:
    """The served answer for one MNIST test image (the benchmark's first request), as a reader
    reads it: class and probability, the kept chunks with p(z | x), the mask rows."""
    example = _json(root, SERVING_BENCH)["example"]
    answer = example["answer"]
    p_z = [v for channel in answer["p_z"] for row in channel for v in row]
    chunks = ", ".join(f"{c} (p = {p_z[c]:.3f})" for c in answer["chunks"])
    mask = [row for channel in answer["mask"] for row in channel]
    return "\n".join([
        f"Test image {example['index']} (true class {example['true_class']}): `class` "
        f"{answer['class']} (`label` \"{answer['label']}\"), probability "
        f"{answer['probabilities'][answer['class']]:.4f}; `chunks` {chunks}, of "
        f"{len(p_z)} chunks whose p(z | x) sums to 1 (uniform: {1 / len(p_z):.3f}); `mask`, "
        "one string per pixel row, 1 where a kept chunk lies:", "", "```",
        *mask, "```"])


BLOCKS |= {"serving-bench": serving_bench_block, "serving-answer": serving_answer_block}


if __name__ == "__main__":
    sys.exit(main())
