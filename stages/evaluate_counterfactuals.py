"""DVC stage `evaluate_counterfactuals`: how good the invertible image classifier's
counterfactuals are, judged by the independent black box, on the whole test set.

Reads the image classifier of `train_invertible`, the black box of `train_blackbox` and the
measurement models of `train_measurement_models` (stages of their own, so none is re-trained when
another changes) and writes `metrics/counterfactuals.json`: validity, proximity, plausibility and
the boundary importance's post-hoc accuracy beside gradient saliency's
(`xai.evaluation.counterfactuals`), and the literature's measures (IM1, IM2, oracle validity, FID,
with the reference rows and the normalised IM1; `xai.evaluation.counterfactual_measures`) of the
runner-up crossings (keys `runner_up*`) and of the crossings to `render.counterfactual_target`
(keys `target*`, absent when it is null), all with 95 % bootstrap intervals over images. The
black box's passes run in `invertible.counterfactual.precision` (bf16 autocast: a third less time
for the stage on a 2-core AMX host with CIFAR-10's airbench black box).
"""

from __future__ import annotations

import argparse
import time

from xai.data.prepared import load_dataset
from xai.devices import select_device, use_bf16
from xai.errors import ConfigError
from xai.evaluation.counterfactual_measures import (
    headline,
    make_crossings,
    measure_crossings,
)
from xai.evaluation.counterfactuals import counterfactual_quality, guide_for
from xai.evaluation.uncertainty import resample_indices
from xai.io import check_writable, save_json
from xai.models.blackbox import load_blackbox
from xai.models.invertible import IMAGE_KIND, load_classifier
from xai.models.measurement import load_measurement_models
from xai.pipeline import cli, tracking
from xai.pipeline.config import flatten, load_config
from xai.tensors import bf16_passes
from xai.train.loop import seed_everything


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="input: prepared image set")
    parser.add_argument("--invertible", required=True, help="input: the image invertible model")
    parser.add_argument("--blackbox", required=True, help="input: the black box (the judge)")
    parser.add_argument("--measurement", required=True,
                        help="input: the measurement models (train_measurement_models)")
    parser.add_argument("--metrics", required=True, help="output: metrics JSON")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.metrics)
    cf = cfg.invertible.counterfactual
    target = cfg.render.counterfactual_target
    device = select_device(cfg.device)
    params = {**flatten(cf, "invertible.counterfactual"),
              "render.counterfactual_target": target}
    with tracking.stage_run(cfg, "evaluate_counterfactuals", params) as run:
        started = time.perf_counter()
        generator = seed_everything(cfg.seed, device)
        data = load_dataset(args.data, device)
        if target is not None and target >= data.num_classes:
            raise ConfigError(f"render.counterfactual_target = {target} is out of range; "
                              f"allowed: 0 to {data.num_classes - 1} or null")
        model = load_classifier(args.invertible, IMAGE_KIND, device)
        blackbox = load_blackbox(args.blackbox, device)
        if use_bf16(cf.precision, device):
            blackbox = bf16_passes(blackbox)
        measurement = load_measurement_models(args.measurement, device)
        guide = guide_for(cf, model, data.train, data.num_classes)
        metrics = counterfactual_quality(model, blackbox, data.test, cf.margin, cf.posthoc_k,
                                         cf.posthoc_chunk, cf.batch_size, generator, guide,
                                         seed=cfg.seed)
        lines = []
        for prefix, cls in (("runner_up", None), ("target", target)):
            if prefix == "target" and cls is None:
                continue
            crossings = make_crossings(model, data.test, cf.margin, cf.batch_size, guide, cls)
            indices = resample_indices(len(crossings.index), 1000, cfg.seed)
            metrics.update(measure_crossings(measurement, blackbox, data.test, crossings,
                                             cf.batch_size, generator, indices,
                                             indices[:cf.fid_resamples], prefix))
            lines.append(headline(metrics, prefix))
        if target is not None:
            metrics["target_class"] = target
        seconds = time.perf_counter() - started
        save_json(metrics, args.metrics)
        run.log_headline(metrics)
        run.log_artifact(args.metrics, "metrics")
    print("evaluate_counterfactuals: " + ", ".join(
        f"{k} {v:.4g}" for k, v in metrics.items() if k.startswith("image_")) + "; "
        + "; ".join(lines) + f"; {seconds:.0f} s")


if __name__ == "__main__":
    cli.run(main, "evaluate_counterfactuals")
