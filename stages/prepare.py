"""DVC stage `prepare`: read the configured image data set into one prepared file."""

from __future__ import annotations

import argparse

from xai.data.prepared import save_dataset
from xai.data.sources import load_images
from xai.io import check_writable
from xai.pipeline import cli, tracking
from xai.pipeline.config import flatten, load_config
from xai.pipeline.paths import resolve_input


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="prepared data set file (.pt)")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.out)
    with tracking.stage_run(cfg, "prepare", flatten(cfg.data, "data")) as run:
        ds = load_images(cfg.data, resolve_input(cfg.data.root))
        cfg.check_recipe(ds.input_shape)  # a folder's images: their shape is known only now
        save_dataset(ds, args.out)
        sizes = {f"{s}_size": len(getattr(ds, s)) for s in ("train", "val", "test")}
        run.log_metrics({**sizes, "num_classes": ds.num_classes})
    print(f"prepare: {ds.name} {ds.input_shape}, {sizes}, classes {', '.join(ds.classes)}")


if __name__ == "__main__":
    cli.run(main, "prepare")
