"""DVC stage `evaluate`: every explanation method measured the same way on one test subset."""

from __future__ import annotations

import argparse
import math
import time

import torch

from xai.data.prepared import load_dataset
from xai.devices import channels_last_copy, select_device, use_bf16
from xai.errors import ConfigError, DataError
from xai.evaluation.controls import ClassInPosition, FixedChunks
from xai.evaluation.table import (
    HEADLINE,
    MethodResult,
    construction_note,
    evaluate,
    headline_key,
)
from xai.explain.attribution import (
    ExplainerDistribution,
    GradientSaliency,
    GradientShap,
    InputTimesGradient,
    IntegratedGradients,
    KernelShap,
    Lime,
    Occlusion,
    RandomChunks,
    SmoothGrad,
)
from xai.explain.boundary import BoundaryImportance
from xai.io import check_writable, load_json, save_json, transaction, write_bytes
from xai.models.blackbox import load_blackbox
from xai.models.explainers import evaluation_budgets
from xai.models.invertible import IMAGE_KIND, load_classifier
from xai.models.judge import load_judge
from xai.models.vibi import load_vibi
from xai.pipeline import cli, serving, tracking
from xai.pipeline.config import CHUNK_KEYS, SHAP_BASELINES, flatten, load_config
from xai.tensors import bf16_passes, to_unit
from xai.train.loop import seed_everything
from xai.viz.figures import (
    cost_figure,
    deletion_insertion_figure,
    measures_figure,
    save_png,
)

SCALAR_MEASURES = ["deletion_auc", "insertion_auc", "deletion_auc_road", "insertion_auc_road",
                   "encoding", "sparseness", "infidelity", "max_sensitivity",
                   "randomization_spearman_top", "randomization_spearman_all",
                   "randomization_floor"]
#: The amortised methods (a trained explainer) and the stages' timings holding their training.
AMORTISED = ("vibi", "l2x")


def explanation_cost(methods: list[MethodResult], training: dict[str, float]) -> dict:
    """Seconds and explained-model evaluations per image for every method; for each amortised
    method (`training`: its one-time training seconds) the number of images beyond which training
    plus explaining costs less than each other method's explaining (None: never cheaper)."""
    per_image = {r.name: {"seconds_per_image": r.seconds_per_image,
                          "model_evaluations_per_image": r.evaluations_per_image}
                 for r in methods}
    break_even = {}
    for name, seconds in training.items():
        own = per_image[name]["seconds_per_image"]
        break_even[name] = {
            other: (math.ceil(seconds / (c["seconds_per_image"] - own))
                    if c["seconds_per_image"] > own else None)
            for other, c in per_image.items() if other not in training}
    return {"methods": per_image, "training_seconds": training, "break_even_images": break_even}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    for name in ("data", "blackbox", "judge", "vibi", "l2x", "invertible"):
        parser.add_argument(f"--{name}", required=True, help=f"input: {name} file")
    parser.add_argument("--metrics", required=True, help="output: method x measure JSON")
    parser.add_argument("--differences", required=True,
                        help="output: VIBI minus each method, paired intervals (JSON)")
    parser.add_argument("--table", required=True, help="output: the tables as Markdown")
    parser.add_argument("--curves-figure", required=True, help="output: deletion/insertion PNG")
    parser.add_argument("--measures-figure", required=True, help="output: measures PNG")
    parser.add_argument("--cost-figure", required=True, help="output: fidelity against cost PNG")
    for name in AMORTISED:
        parser.add_argument(f"--{name}-timings", required=True,
                            help=f"input: train_{name}'s timings (its training seconds)")
    parser.add_argument("--timings", required=True, help="output: wall-clock figures JSON")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.metrics, args.differences, args.table, args.curves_figure,
                   args.measures_figure, args.cost_figure, args.timings)
    ev = cfg.evaluate
    device = select_device(cfg.device)
    params = {"device": str(device), "road_noise_std": cfg.road_noise_std,
              **flatten(ev, "evaluate")}
    with tracking.stage_run(cfg, "evaluate", params) as run, transaction() as outputs:
        started = time.perf_counter()
        seed_everything(ev.seed, device)
        data = load_dataset(args.data)  # on the CPU: only the chosen test images go to the device
        blackbox = load_blackbox(args.blackbox, device)
        judge = load_judge(args.judge, device, cfg.judge.mirror)
        vibi, l2x = load_vibi(args.vibi, device), load_vibi(args.l2x, device)
        invertible = load_classifier(args.invertible, IMAGE_KIND, device).eval()
        if use_bf16(ev.precision, device):  # the black box's and the judge's passes in bf16,
            blackbox = bf16_passes(blackbox)  # in their fastest layout
            judge.net = bf16_passes(judge.net)
        chunk = vibi.spec.chunk
        if judge.chunk != chunk:
            raise DataError(f"{args.judge} was trained on {judge.chunk}-pixel chunks, the explainer "
                            f"uses {chunk}; re-run train_judge")
        try:
            budgets = evaluation_budgets(ev.budgets, vibi.spec.k,
                                         vibi.spec.num_chunks // vibi.spec.xpl_channels)
        except ConfigError as exc:
            raise exc.qualified("", CHUNK_KEYS) from None
        if ev.num_images > len(data.test):
            raise ConfigError(f"evaluate.num_images = {ev.num_images} is out of range; allowed: "
                              f"<= {len(data.test)} test images")
        generator = torch.Generator().manual_seed(ev.seed)
        pick = torch.randperm(len(data.test), generator=generator)
        x = to_unit(data.test.x[pick[:ev.num_images].sort().values].to(device))
        references = torch.randperm(len(data.train), generator=generator)[:SHAP_BASELINES]
        shap_baselines = to_unit(data.train.x[references].to(device))
        explainers = [
            (ExplainerDistribution("vibi", vibi, blackbox), "blackbox"),
            (ExplainerDistribution("l2x", l2x, blackbox), "blackbox"),
            (GradientSaliency(blackbox), "blackbox"),
            (InputTimesGradient(blackbox), "blackbox"),
            (SmoothGrad(blackbox, ev.smoothgrad_samples, ev.smoothgrad_std, ev.batch_size),
             "blackbox"),
            (IntegratedGradients(channels_last_copy(blackbox), steps=ev.ig_steps), "blackbox"),
            (GradientShap(blackbox, shap_baselines, ev.shap_samples), "blackbox"),
            (Occlusion(blackbox, chunk, ev.batch_size, ev.occlusion_window, ev.occlusion_stride),
             "blackbox"),
            (Lime(blackbox, chunk, ev.lime_samples, ev.seed), "blackbox"),
            (KernelShap(blackbox, chunk, ev.lime_samples, ev.seed), "blackbox"),
            (RandomChunks(blackbox, chunk, ev.seed), "blackbox"),
            (FixedChunks(blackbox, chunk), "blackbox"),
            (ClassInPosition(blackbox, chunk, ev.seed), "blackbox"),
            (BoundaryImportance(invertible), "invertible"),
            (GradientSaliency(invertible, name="saliency_invertible"), "invertible"),
        ]
        settings = ev.measures(budgets, vibi.spec.k, chunk, cfg.road_noise_std)
        report = evaluate({method.name: (method, model) for method, model in explainers},
                          {"blackbox": blackbox, "invertible": invertible}, x, judge=judge,
                          reference="vibi", settings=settings)
        evaluation, results = report.evaluation, report.table
        save_json(results, args.metrics)
        save_json(report.differences, args.differences)
        tables = report.markdown(construction_note(cfg.vibi.objective, settings.k,
                                                     cfg.vibi.fill))
        write_bytes(args.table, tables.encode())
        curves = {r.name: {"fractions": r.fractions.tolist(),
                           **{k: v.tolist() for k, v in r.curves.items()}}
                  for r in evaluation.methods}
        training = {name: load_json(getattr(args, f"{name}_timings"))["train_seconds"]
                    for name in AMORTISED}
        cost = explanation_cost(evaluation.methods, training)
        fidelity = headline_key("fidelity", settings.k)
        points = {name: {**{key: results["methods"][name][key] for key in
                            (fidelity, f"{fidelity}_ci_low", f"{fidelity}_ci_high")},
                         "seconds_per_image": c["seconds_per_image"],
                         "amortised": float(name in training)}
                  for name, c in cost["methods"].items()}
        figures = {args.curves_figure: deletion_insertion_figure(curves),
                   args.measures_figure: measures_figure(results["methods"], list(budgets),
                                                         SCALAR_MEASURES),
                   args.cost_figure: cost_figure(points, fidelity)}
        for path, fig in figures.items():
            save_png(fig, path, dpi=120)
        save_json({"evaluate_seconds": round(time.perf_counter() - started, 2),
                   "method_seconds": {r.name: r.seconds for r in evaluation.methods},
                   "cost": cost}, args.timings)
        outputs.commit()
        for path in figures:
            run.log_artifact(path, "figures")
        run.log_artifact(args.table, "tables")
        means = {f"{m}.{k}": v for m, row in results["methods"].items()
                 for k, v in row.items() if isinstance(v, float)
                 and not k.endswith(("_ci_low", "_ci_high"))}
        headline = {f"{m}.{headline_key(h, settings.k)}" for m in results["methods"]
                    for h in HEADLINE}
        run.log_headline({k: v for k, v in means.items() if k in headline})
        run.log_metrics({k: v for k, v in means.items() if k not in headline})
        run.log_metrics({f"judge.{k}": v for k, v in results["judge"].items()
                         if not k.endswith(("_ci_low", "_ci_high"))})
        # the registered version made from this models/vibi.pt: champion or not (docs/serving.md)
        promoting = time.perf_counter()
        decision = serving.promote(run, cfg.serving.registered_model, args.vibi, fidelity,
                                   results["methods"]["vibi"][fidelity])
        run.log_metrics({"promotion_seconds": time.perf_counter() - promoting})
    print(tables)
    if decision is not None:
        print(f"evaluate: {decision}")


if __name__ == "__main__":
    cli.run(main, "evaluate")
