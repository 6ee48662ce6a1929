"""DVC stages `train_l2x` and `train_vibi`: train an explainer and approximator for the black box.

`--method l2x` is the beta = 0 entry (trained from scratch for `vibi.l2x_epochs`); `--method vibi`
uses `vibi.beta` and, with `vibi.jump_start`, starts from the L2X model given by `--init`.
"""

from __future__ import annotations

import argparse

from xai.data.prepared import Split, load_dataset
from xai.devices import select_device, use_bf16
from xai.errors import CheckpointError, ConfigError, DataError
from xai.io import check_writable, file_md5, save_json, save_torch, transaction
from xai.models.blackbox import load_blackbox, load_probabilities
from xai.models.vibi import VibiModel, explain_split, load_vibi, save_vibi
from xai.pipeline import cli, grids, serving, tracking
from xai.pipeline.config import flatten, load_config
from xai.tensors import to_unit
from xai.train.loop import (
    History,
    distributed_device,
    init_distributed,
    seed_everything,
)
from xai.train.vibi import (
    entry_settings,
    explanations_state,
    spec_for,
    summarize,
    train,
)

VAL_TARGET = 0.90  # time-to-quality: first epoch at which validation fidelity reaches this


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--method", choices=("vibi", "l2x"), required=True)
    parser.add_argument("--data", required=True, help="prepared image set (.pt)")
    parser.add_argument("--probs", required=True, help="the black box's probabilities (.pt)")
    parser.add_argument("--blackbox", required=True, help="the black box (.pt), for post-hoc accuracy")
    parser.add_argument("--init", help="model to jump-start from (vibi with vibi.jump_start)")
    parser.add_argument("--model", required=True, help="output: explainer + approximator")
    parser.add_argument("--explanations", required=True, help="output: test-set explanations")
    parser.add_argument("--metrics", required=True, help="output: metrics JSON")
    parser.add_argument("--timings", required=True, help="output: wall-clock figures JSON")
    parser.add_argument("--plots", required=True, help="output: per-epoch CSV")
    parser.add_argument("--checkpoint", required=True,
                        help="resume checkpoint (outside DVC's outputs, deleted when done)")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.model, args.explanations, args.metrics, args.timings, args.plots,
                   args.checkpoint)
    settings = entry_settings(cfg.vibi.library, args.method)
    if settings.jump_start and not args.init:
        raise ConfigError("vibi.jump_start is true but no --init model was given")
    stage = f"train_{args.method}"
    device = distributed_device(select_device(cfg.device))
    dist = init_distributed(device)
    params = {"seed": cfg.seed, "device": str(device), "method": args.method,
              **flatten(settings, "vibi"), "vibi.grid_images": cfg.vibi.grid_images}
    with tracking.stage_run(cfg, stage, params, enabled=dist.is_main) as run, \
            transaction() as outputs:
        blackbox = load_blackbox(args.blackbox, device)  # before seeding; a bad file stops us here
        seed_everything(cfg.seed, device)
        data = load_dataset(args.data, device)
        probs = load_probabilities(args.probs, device)
        for split in ("train", "val", "test"):
            if probs[split].shape != (len(getattr(data, split)), data.num_classes):
                raise DataError(f"{args.probs} does not match {args.data} ({split}: "
                                f"{tuple(probs[split].shape)} probabilities for "
                                f"{len(getattr(data, split))} images of {data.num_classes} "
                                "classes); re-run train_blackbox")
        spec = spec_for(settings, data)
        model = VibiModel(spec).to(device)
        init_digest = ""
        if settings.jump_start:
            init = load_vibi(args.init, device)
            if init.spec != spec:
                raise CheckpointError(f"{args.init} was trained for {init.spec}, not {spec}; "
                                      "re-run train_l2x")
            model.load_state_dict(init.state_dict())
            init_digest = file_md5(args.init)
        history = History(run, target_key="val_fidelity", target=VAL_TARGET)
        amp = use_bf16(settings.precision, device)
        watch = None  # off (no drawing at all) without images or without tracking
        if cfg.vibi.grid_images and not isinstance(run, tracking.NullRun):
            n = cfg.vibi.grid_images  # the first n validation images, the same at every step
            watch = grids.GridLogger(run, Split(data.val.x[:n], data.val.y[:n]),
                                     probs["val"][:n], data.classes, settings, blackbox, amp)
        train(model, settings, Split(data.train.x, probs["train"]),
              Split(data.val.x, probs["val"]), seed=cfg.seed, history=history,
              checkpoint=args.checkpoint, jump_started=settings.jump_start,
              run_id=init_digest, desc=args.method, show_progress=dist.is_main, dist=dist,
              blackbox=blackbox, on_validation=watch)
        grid_seconds = 0.0 if watch is None else watch.seconds
        train_seconds = history.elapsed - grid_seconds  # training alone, with or without grids
        if not dist.is_main:
            return
        approximator = blackbox if settings.objective == "blackbox" else None
        test = explain_split(model, data.test.x, blackbox, amp=amp, approximator=approximator)
        test_metrics = summarize(test, probs["test"])
        val_metrics = summarize(explain_split(model, data.val.x, amp=amp, approximator=approximator),
                                probs["val"])
        save_vibi(model, args.model, method=args.method, beta=settings.beta)
        save_torch(explanations_state(model, test, probs["test"]), args.explanations)
        history.save(args.plots)
        # approximator_fidelity: the paper's measure, its own approximator's agreement with
        # the black box (for the `blackbox` objective the approximator is the black box)
        metrics = {"approximator_fidelity": test_metrics["fidelity"],
                   "val_approximator_fidelity": val_metrics["fidelity"],
                   "posthoc_accuracy": test_metrics["posthoc_accuracy"],
                   "mean_kl": test_metrics["mean_kl"], "mean_js": test_metrics["mean_js"],
                   "k": settings.k, "beta": settings.beta, "num_chunks": spec.num_chunks}
        rates = [row["images_per_second"] for row in history.rows]
        timings = {"train_seconds": round(train_seconds, 2),
                   f"seconds_to_val_fidelity_{VAL_TARGET}": history.seconds_to_target,
                   "train_images_per_second": round(sum(rates) / max(len(rates), 1), 1),
                   # drawing and logging the explanation grids, on top of train_seconds
                   "grid_seconds": round(grid_seconds, 2)}
        # the explainer as an MLflow Model of this run (train_vibi: a version of the registered
        # model too), on top of the rest: exporting, saving, logging and registering it
        logged = serving.log_stage_explainer(
            run, model, args.blackbox, data.classes, to_unit(data.test.x[:1]), cfg.serving,
            serving.explainer_tags(data.name, spec, settings.beta, args.method),
            registered=args.method == "vibi")
        timings["model_log_seconds"] = logged["model_log_seconds"]
        save_json(metrics, args.metrics)
        save_json(timings, args.timings)
        outputs.commit()
        run.log_headline(metrics)
        run.log_metrics({k: v for k, v in timings.items() if v is not None})
        run.tag_outputs(args.model, args.explanations)
    print(f"{stage}: {spec.explainer_type}, k = {spec.k} of {spec.num_chunks} chunks, "
          f"beta = {settings.beta}, objective {settings.objective}: test approximator fidelity "
          f"{metrics['approximator_fidelity']:.4f}, post-hoc accuracy "
          f"{metrics['posthoc_accuracy']:.4f}, mean KL {metrics['mean_kl']:.3f}, "
          f"{train_seconds:.0f} s training")
    if logged["version"] is not None:
        print(f"{stage}: registered as {cfg.serving.registered_model} version "
              f"{logged['version']} ({logged['model_log_seconds']:.1f} s to log and register)")


if __name__ == "__main__":
    cli.run(main, "train_vibi")
