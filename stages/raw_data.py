"""DVC stage `raw_data`: fingerprint the raw image files that `prepare` reads.

Raw data lives outside DVC's control (torchvision may download it into `data.root`, and DVC will
not start a stage whose dependency does not exist yet), so this cheap stage runs at every
`dvc repro` (`always_changed`) and writes the md5 of each raw file. `prepare` depends on that
record: replaced raw files re-run it, while an unchanged data set leaves the record, and so
everything downstream, untouched.
"""

from __future__ import annotations

import argparse

from xai.data.sources import raw_fingerprint
from xai.io import check_writable, save_json
from xai.pipeline import cli
from xai.pipeline.config import load_config
from xai.pipeline.paths import resolve_input


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output: the raw files' md5s (JSON)")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.out)
    fingerprint = raw_fingerprint(cfg.data, resolve_input(cfg.data.root))
    save_json(fingerprint, args.out)
    files = fingerprint["files"]
    missing = [name for name, digest in files.items() if digest is None]  # type: ignore[union-attr]
    print(f"raw_data: {len(files)} raw files of {cfg.data.dataset}"  # type: ignore[arg-type]
          + (f", {len(missing)} missing (prepare downloads them when data.download is true)"
             if missing else ""))


if __name__ == "__main__":
    cli.run(main, "raw_data")
