"""DVC stage `train_blackbox`: train the classifier the explanations explain, or read the user's
(`blackbox.source`); either way write it and its probabilities on every split."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from xai.data.prepared import load_dataset
from xai.devices import select_device
from xai.errors import ConfigError
from xai.io import check_writable, save_json, transaction
from xai.models.blackbox import (
    TRAIN,
    architecture,
    check_outputs,
    describe,
    load_user_model,
    parameter_count,
    save_blackbox,
    save_probabilities,
)
from xai.pipeline import cli, tracking
from xai.pipeline.config import Config, flatten, load_config, param_error
from xai.train.blackbox import loss_and_accuracy, probabilities, train_blackbox
from xai.train.loop import (
    History,
    distributed_device,
    init_distributed,
    seed_everything,
)

VAL_TARGET = 0.99  # time-to-quality: first epoch at which validation accuracy reaches this


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", required=True, help="prepared image set (.pt)")
    parser.add_argument("--model", required=True, help="output: the trained black box")
    parser.add_argument("--probs", required=True, help="output: its probabilities on every split")
    parser.add_argument("--metrics", required=True, help="output: metrics JSON")
    parser.add_argument("--timings", required=True, help="output: wall-clock figures JSON")
    parser.add_argument("--plots", required=True, help="output: per-epoch CSV")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.model, args.probs, args.metrics, args.timings, args.plots)
    device = distributed_device(select_device(cfg.device))
    dist = init_distributed(device)
    params = {"seed": cfg.seed, "device": str(device), **flatten(cfg.blackbox, "blackbox")}
    if cfg.blackbox.source != TRAIN:
        user_blackbox(cfg, device, args, params)
        return
    with tracking.stage_run(cfg, "train_blackbox", params, enabled=dist.is_main) as run, \
            transaction() as outputs:
        generator = seed_everything(cfg.seed, device)
        data = load_dataset(args.data, device)
        history = History(run, target_key="val_accuracy", target=VAL_TARGET)
        trained = train_blackbox(cfg.blackbox, data, history, generator, dist)
        train_seconds = history.elapsed
        test_loss, test_acc = loss_and_accuracy(trained.model, data.test.x, data.test.y,
                                       cfg.blackbox.eval_batch_size)
        if not dist.is_main:
            return
        save_blackbox(trained.model, trained.spec, data.classes, args.model)
        save_probabilities(probabilities(trained.model, data, cfg.blackbox.eval_batch_size),
                           args.probs)
        history.save(args.plots)
        metrics = {"test_accuracy": test_acc, "test_loss": test_loss,
                   "val_accuracy": history.rows[-1]["val_accuracy"],
                   "parameters": describe(trained.spec)["parameters"]}
        timings = {"train_seconds": round(train_seconds, 2),
                   "seconds_to_val_accuracy_0.99": history.seconds_to_target,
                   "train_images_per_second": round(trained.images_per_second, 1)}
        save_json(metrics, args.metrics)
        save_json(timings, args.timings)
        outputs.commit()
        run.log_headline(metrics)
        run.log_metrics({k: v for k, v in timings.items() if v is not None})
        run.set_tags({"xai.blackbox_arch": trained.spec.arch, "xai.augment": trained.augment})
        run.tag_outputs(args.model, args.probs)
    print(f"train_blackbox: {trained.spec.arch} on {data.name}: test accuracy {test_acc:.4f}, "
          f"loss {test_loss:.4f}, {train_seconds:.0f} s training")


def user_blackbox(cfg: Config, device: torch.device, args: argparse.Namespace,
                  params: dict[str, Any]) -> None:
    """The user's model as the black box: checked against the data, measured, its probabilities
    written like a trained one's. The judge's architecture is the one training would have used."""
    source = cfg.blackbox.source
    try:
        model = load_user_model(source)  # before any work: a bad file stops us here
    except ConfigError as exc:
        raise param_error(exc) from None
    with tracking.stage_run(cfg, "train_blackbox", params) as run, transaction() as outputs:
        started = time.perf_counter()
        data = load_dataset(args.data, device)
        model = model.to(device).eval()
        try:
            check_outputs(model, data.val.x, data.num_classes, source)
        except ConfigError as exc:
            raise param_error(exc) from None
        spec = architecture(cfg.blackbox, data.input_shape, data.num_classes)
        batch = cfg.blackbox.eval_batch_size
        test_loss, test_acc = loss_and_accuracy(model, data.test.x, data.test.y, batch)
        val_loss, val_acc = loss_and_accuracy(model, data.val.x, data.val.y, batch)
        save_blackbox(model, spec, data.classes, args.model)
        save_probabilities(probabilities(model, data, batch), args.probs)
        History(run).save(args.plots)  # no training, no epochs: an empty plots file
        metrics = {"test_accuracy": test_acc, "test_loss": test_loss, "val_accuracy": val_acc,
                   "val_loss": val_loss, "parameters": parameter_count(model)}
        timings = {"load_seconds": round(time.perf_counter() - started, 2)}
        save_json(metrics, args.metrics)
        save_json(timings, args.timings)
        outputs.commit()
        run.log_headline(metrics)
        run.log_metrics(timings)
        run.set_tags({"xai.blackbox_arch": f"user {model.format}", "xai.blackbox_source": source})
        run.tag_outputs(args.model, args.probs)
    print(f"train_blackbox: the user's {model.format} model {source} on {data.name}: test "
          f"accuracy {test_acc:.4f}, loss {test_loss:.4f}")


if __name__ == "__main__":
    cli.run(main, "train_blackbox")
