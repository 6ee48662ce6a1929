"""DVC stage `render`: decision boundaries, VIBI explanations, counterfactuals, training curves."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from xai.data.prepared import load_dataset
from xai.errors import ConfigError
from xai.evaluation.counterfactuals import guide_for
from xai.evaluation.invertible import PROJECTIONS_KIND
from xai.io import check_writable, load_torch, transaction
from xai.models.blackbox import load_probabilities
from xai.models.invertible import IMAGE_KIND, load_classifier
from xai.pipeline import cli, tracking
from xai.pipeline.config import flatten, load_config
from xai.tensors import to_unit
from xai.train.vibi import EXPLANATIONS_KIND
from xai.viz.figures import read_rows, save_png, training_curves
from xai.viz.render import (
    counterfactual_rows,
    counterfactuals,
    toy_boundary,
    vibi_grid,
    vibi_panels,
)


def _pick(n: int, count: int, generator: torch.Generator) -> list[int]:
    return torch.randperm(n, generator=generator)[:count].sort().values.tolist()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="input: prepared image set")
    parser.add_argument("--probs", required=True, help="input: black-box probabilities")
    parser.add_argument("--toy-projections", required=True, help="input: train_invertible output")
    parser.add_argument("--vibi-explanations", required=True, help="input: train_vibi output")
    parser.add_argument("--invertible", required=True, help="input: the image invertible model")
    parser.add_argument("--plots", required=True, nargs="+", help="input: per-epoch CSVs")
    for name in ("toy-figure", "vibi-figure", "counterfactual-figure", "curves-figure"):
        parser.add_argument(f"--{name}", required=True, help="output: PNG")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.toy_figure, args.vibi_figure, args.counterfactual_figure,
                   args.curves_figure)
    r = cfg.render
    cf = cfg.invertible.counterfactual
    params = {**flatten(r, "render"), "invertible.counterfactual.margin": cf.margin,
              "invertible.counterfactual.direction": cf.direction}
    with tracking.stage_run(cfg, "render", params) as run, transaction() as outputs:
        g = torch.Generator().manual_seed(r.seed)
        data = load_dataset(args.data)
        if r.counterfactual_target is not None and r.counterfactual_target >= data.num_classes:
            raise ConfigError(f"render.counterfactual_target = {r.counterfactual_target} is out "
                              f"of range; allowed: 0 to {data.num_classes - 1} or null")
        toy = load_torch(args.toy_projections, kind=PROJECTIONS_KIND)
        save_png(toy_boundary(toy, _pick(len(toy["test_y"]), r.toy_points, g)), args.toy_figure,
                 r.dpi)

        expl = load_torch(args.vibi_explanations, kind=EXPLANATIONS_KIND)
        probs = load_probabilities(args.probs)["test"]
        panels = vibi_panels(data.test, expl, probs, _pick(len(data.test), r.vibi_images, g))
        save_png(vibi_grid(panels, data.classes, expl["spec"]["k"], cfg.vibi.beta,
                           r.vibi_columns), args.vibi_figure, r.dpi)

        model = load_classifier(args.invertible, IMAGE_KIND).eval()
        chosen = to_unit(data.test.x[_pick(len(data.test), r.counterfactual_images, g)])
        guide = guide_for(cf, model, data.train, data.num_classes)
        rows = counterfactual_rows(model, chosen, r.counterfactual_target, cf.margin, guide)
        save_png(counterfactuals(rows, data.classes), args.counterfactual_figure, r.dpi)

        histories = {Path(p).stem: read_rows(p) for p in args.plots}
        save_png(training_curves(histories), args.curves_figure, r.dpi)
        outputs.commit()

        for figure, source in ((args.toy_figure, args.toy_projections),
                               (args.vibi_figure, args.vibi_explanations),
                               (args.counterfactual_figure, args.invertible),
                               (args.curves_figure, None)):
            run.log_artifact(figure, "figures")
            if source is not None:
                run.log_to_producer(source, figure, "figures")
    print(f"render: wrote {args.toy_figure}, {args.vibi_figure}, {args.counterfactual_figure}, "
          f"{args.curves_figure}")


if __name__ == "__main__":
    cli.run(main, "render")
