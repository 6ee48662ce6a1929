"""DVC stage `prepare_toy`: sample the 2-D toy set into one prepared file."""

from __future__ import annotations

import argparse

from xai.data.prepared import save_dataset
from xai.data.toy import make_toy
from xai.io import check_writable
from xai.pipeline import cli, tracking
from xai.pipeline.config import flatten, load_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="prepared toy set file (.pt)")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.out)
    with tracking.stage_run(cfg, "prepare_toy", flatten(cfg.toy, "toy")) as run:
        ds = make_toy(cfg.toy)
        save_dataset(ds, args.out)
        run.log_metrics({"train_size": len(ds.train), "test_size": len(ds.test),
                         "num_classes": ds.num_classes})
    print(f"prepare_toy: {ds.name}, {len(ds.train)} train, {len(ds.test)} test points")


if __name__ == "__main__":
    cli.run(main, "prepare_toy")
