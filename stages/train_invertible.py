"""DVC stages `train_invertible_toy` and `train_invertible`: invertible classifiers with
explicit decision boundaries.

Trains the toy classifier on the prepared toy set (`--toy` and its outputs) and/or the image
classifier on the prepared image set (`--images` and its outputs), projects every test point onto
its decision boundary, and writes the models, the projections, per-epoch histories and the checks
(accuracy, reconstruction error of `T`, residual of the projections) to `--metrics`. DVC runs the
two parts as two stages, so a toy parameter does not re-train the image model.
"""

from __future__ import annotations

import argparse
import time

from xai.data.prepared import load_dataset
from xai.devices import select_device
from xai.errors import ConfigError
from xai.evaluation.invertible import check, image_projections, toy_projections
from xai.io import check_writable, save_json, save_torch, transaction
from xai.models.invertible import (
    IMAGE_KIND,
    TOY_KIND,
    image_classifier,
    save_classifier,
)
from xai.pipeline import cli, tracking
from xai.pipeline.config import flatten, load_config
from xai.train.invertible import train_image, train_toy
from xai.train.loop import (
    History,
    cpu_threads,
    distributed_device,
    init_distributed,
    seed_everything,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--toy", help="prepared toy set (.pt); with the --toy-* outputs")
    parser.add_argument("--images", help="prepared image set (.pt); with the --image-* outputs")
    parser.add_argument("--toy-model")
    parser.add_argument("--image-model")
    parser.add_argument("--toy-projections")
    parser.add_argument("--image-projections")
    parser.add_argument("--toy-plot", help="per-epoch CSV of the toy training")
    parser.add_argument("--image-plot", help="per-epoch CSV of the image training")
    parser.add_argument("--metrics", required=True, help="metrics JSON")
    parser.add_argument("--timings", required=True, help="wall-clock figures JSON")
    args = parser.parse_args(argv)
    parts = {part: getattr(args, part) is not None for part in ("toy", "images")}
    for part, outputs in (("toy", ("toy_model", "toy_projections", "toy_plot")),
                          ("images", ("image_model", "image_projections", "image_plot"))):
        if parts[part] and any(getattr(args, o) is None for o in outputs):
            parser.error(f"--{part} needs " + ", ".join(f"--{o.replace('_', '-')}"
                                                         for o in outputs))
    if not any(parts.values()):
        parser.error("give --toy, --images or both")
    cfg = load_config(args.params)
    check_writable(args.toy_model, args.image_model, args.toy_projections,
                   args.image_projections, args.toy_plot, args.image_plot, args.metrics,
                   args.timings)
    device = distributed_device(select_device(cfg.device))
    dist = init_distributed(device)
    toy = load_dataset(args.toy, device) if parts["toy"] else None
    images = load_dataset(args.images, device) if parts["images"] else None
    inv = cfg.invertible
    if images is not None:
        try:
            image_classifier(images.input_shape, images.num_classes, inv.image.downsample,
                             inv.image.blocks, inv.image.hidden, inv.image.kernel,
                             inv.image.separation, inv.image.split)
        except ValueError as exc:
            raise ConfigError(
                f"invertible.image does not fit {images.name} images of shape "
                f"{list(images.input_shape)}: {exc}; change invertible.image.downsample"
            ) from None

    params = {"seed": cfg.seed, "device": str(device)}
    if toy is not None:
        params.update({**flatten(inv.toy, "invertible.toy"), "toy.dataset": toy.name})
    if images is not None:
        params.update({**flatten(inv.image, "invertible.image"), "data.dataset": images.name})
    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    summary = []
    with tracking.stage_run(cfg, "train_invertible", params, enabled=dist.is_main) as run, \
            transaction() as outputs:
        started = time.perf_counter()
        if toy is not None:
            seed_everything(cfg.seed, device)
            toy_history = History(run, prefix="toy/")
            toy_model, restart = train_toy(inv.toy, toy, cfg.seed, device, toy_history,
                                           progress=dist.is_main)
            toy_check = check(toy_model, toy.test)
            metrics.update({
                "toy_test_accuracy": toy_check.accuracy,
                "max_reconstruction_error": toy_check.max_reconstruction_error,
                "max_projection_residual": toy_check.max_projection_residual,
                "toy_restart": restart,
                "toy_train_loss": toy_history.rows[-1][f"train_loss_{restart}"],
            })
            timings["toy_wall_seconds"] = round(time.perf_counter() - started, 2)
            summary.append(
                f"toy {toy.name} test accuracy {metrics['toy_test_accuracy']:.4f} (restart "
                f"{restart}), reconstruction {metrics['max_reconstruction_error']:.2e}, residual "
                f"{metrics['max_projection_residual']:.2e}")

        if images is not None:
            image_started = time.perf_counter()
            generator = seed_everything(cfg.seed, device)
            image_history = History(run, prefix="image/")
            with cpu_threads(inv.image.threads):
                trained = train_image(inv.image, images, device, generator, image_history,
                                      progress=dist.is_main, dist=dist)
                image_check = check(trained.model, images.test, inv.image.eval_batch_size)
            metrics.update({
                "image_test_accuracy": image_check.accuracy,
                "image_max_reconstruction_error": image_check.max_reconstruction_error,
                "image_max_projection_residual": image_check.max_projection_residual,
                "image_val_accuracy": image_history.rows[-1]["val_accuracy"],
                "image_train_bits_per_dim": image_history.rows[-1]["train_bits_per_dim"],
                "image_train_mflop_per_image": trained.flops_per_image / 1e6,
            })
            timings.update({
                "image_train_seconds": round(trained.seconds, 2),
                "image_train_images_per_second": round(trained.images_per_second, 1),
                "image_train_gflop_per_second": round(trained.flops_per_image
                                                      * trained.images_per_second / 1e9, 2),
                "image_wall_seconds": round(time.perf_counter() - image_started, 2),
            })
            summary.append(
                f"{images.name} test accuracy {metrics['image_test_accuracy']:.4f}, "
                f"reconstruction {metrics['image_max_reconstruction_error']:.2e}, residual "
                f"{metrics['image_max_projection_residual']:.2e}")
        if not dist.is_main:
            return
        timings["wall_seconds"] = round(time.perf_counter() - started, 2)

        if toy is not None:
            save_classifier(toy_model, args.toy_model, TOY_KIND,
                            {"dataset": toy.name, "classes": list(toy.classes), "seed": cfg.seed,
                             "restart": restart})
            save_torch(toy_projections(toy_model, toy, toy_check), args.toy_projections)
            toy_history.save(args.toy_plot)
        if images is not None:
            save_classifier(trained.model, args.image_model, IMAGE_KIND,
                            {"dataset": images.name, "classes": list(images.classes),
                             "seed": cfg.seed})
            save_torch(image_projections(images, image_check), args.image_projections)
            image_history.save(args.image_plot)
        save_json(metrics, args.metrics)
        save_json(timings, args.timings)
        outputs.commit()
        run.log_metrics({**metrics, **timings})
        for path in (args.metrics, args.toy_plot, args.image_plot):
            if path is not None:
                run.log_artifact(path, "metrics")
        run.tag_outputs(*(p for p in (args.toy_model, args.image_model, args.toy_projections)
                          if p is not None))
    print(f"train_invertible: {'; '.join(summary)}; {timings['wall_seconds']:.0f} s")


if __name__ == "__main__":
    cli.run(main, "train_invertible")
