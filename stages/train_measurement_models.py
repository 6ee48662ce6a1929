"""DVC stage `train_measurement_models`: the models the counterfactuals are measured with.

Trains, on the prepared set's training images only and apart from every explained model, one
small convolutional autoencoder per class, one autoencoder of all classes and an oracle classifier
of another architecture (`xai.models.measurement`, `xai.train.measurement`), and writes them to
`--model`; their checks on validation images (reconstruction errors, the oracle's accuracy) to
`--metrics`; the wall-clock seconds to `--timings`. Stage `evaluate_counterfactuals` reads them.
"""

from __future__ import annotations

import argparse
import time

from xai.data.prepared import load_dataset
from xai.devices import select_device
from xai.io import check_writable, save_json, transaction
from xai.models.measurement import save_measurement_models
from xai.pipeline import cli, tracking
from xai.pipeline.config import flatten, load_config
from xai.train.loop import seed_everything
from xai.train.measurement import train_measurement_models


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="input: prepared image set")
    parser.add_argument("--model", required=True, help="output: the measurement models")
    parser.add_argument("--metrics", required=True, help="output: metrics JSON")
    parser.add_argument("--timings", required=True, help="output: wall-clock figures JSON")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.model, args.metrics, args.timings)
    device = select_device(cfg.device)
    params = {"seed": cfg.seed, "device": str(device), **flatten(cfg.measurement, "measurement")}
    with tracking.stage_run(cfg, "train_measurement_models", params) as run, \
            transaction() as outputs:
        started = time.perf_counter()
        generator = seed_everything(cfg.seed, device)
        data = load_dataset(args.data, device)
        trained = train_measurement_models(cfg.measurement, data, device, generator)
        metrics = {name: round(value, 6) for name, value in trained.metrics.items()}
        timings = {"train_seconds": round(trained.seconds, 2),
                   "wall_seconds": round(time.perf_counter() - started, 2)}
        save_measurement_models(trained.models, args.model,
                                {"dataset": data.name, "classes": list(data.classes),
                                 "seed": cfg.seed})
        save_json(metrics, args.metrics)
        save_json(timings, args.timings)
        outputs.commit()
        run.log_headline(metrics)
        run.log_metrics(timings)
        run.tag_outputs(args.model)
    print("train_measurement_models: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
          + f"; {timings['wall_seconds']:.0f} s")


if __name__ == "__main__":
    cli.run(main, "train_measurement_models")
