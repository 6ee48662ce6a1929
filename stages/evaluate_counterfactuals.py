"""DVC stage `evaluate_counterfactuals`: how good the invertible image classifier's
counterfactuals are, judged by the independent black box, on the whole test set.

Reads the image classifier of `train_invertible` and the black box of `train_blackbox` (a stage of
its own, so neither model is re-trained when the other changes) and writes
`metrics/counterfactuals.json`: validity, proximity, plausibility and the boundary importance's
post-hoc accuracy beside gradient saliency's, with 95 % bootstrap intervals over images
(`xai.evaluation.counterfactuals`).
"""

from __future__ import annotations

import argparse
import time

from xai.data.prepared import load_dataset
from xai.devices import select_device
from xai.evaluation.counterfactuals import centres_for, counterfactual_quality
from xai.io import check_writable, save_json
from xai.models.blackbox import load_blackbox
from xai.models.invertible import IMAGE_KIND, load_classifier
from xai.pipeline import cli, tracking
from xai.pipeline.config import flatten, load_config
from xai.train.loop import seed_everything


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="input: prepared image set")
    parser.add_argument("--invertible", required=True, help="input: the image invertible model")
    parser.add_argument("--blackbox", required=True, help="input: the black box (the judge)")
    parser.add_argument("--metrics", required=True, help="output: metrics JSON")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.metrics)
    cf = cfg.invertible.counterfactual
    device = select_device(cfg.device)
    with tracking.stage_run(cfg, "evaluate_counterfactuals",
                            flatten(cf, "invertible.counterfactual")) as run:
        started = time.perf_counter()
        generator = seed_everything(cfg.seed, device)
        data = load_dataset(args.data, device)
        model = load_classifier(args.invertible, IMAGE_KIND, device)
        blackbox = load_blackbox(args.blackbox, device)
        centres = centres_for(cf.direction, model, data.train, data.num_classes,
                              cf.batch_size)
        metrics = counterfactual_quality(model, blackbox, data.test, cf.margin, cf.posthoc_k,
                                         cf.posthoc_chunk, cf.batch_size, generator, centres,
                                         seed=cfg.seed)
        seconds = time.perf_counter() - started
        save_json(metrics, args.metrics)
        run.log_headline(metrics)
        run.log_artifact(args.metrics, "metrics")
    print("evaluate_counterfactuals: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
          + f"; {seconds:.0f} s")


if __name__ == "__main__":
    cli.run(main, "evaluate_counterfactuals")
