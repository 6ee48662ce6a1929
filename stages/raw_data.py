"""DVC stage `raw_data`: fingerprint the raw image files that `prepare` reads.

Raw data lives outside DVC's control (torchvision may download it into `data.root`, and DVC will
not start a stage whose dependency does not exist yet), so this cheap stage runs at every
`dvc repro` (`always_changed`) and writes the md5 of each raw file. `prepare` depends on that
record: replaced raw files re-run it, while an unchanged data set leaves the record, and so
everything downstream, untouched. A data set none of whose files is here leaves the record as it
is too: a clone that pulled the prepared set from the team's remote has no raw data, and absent
data is not changed data (`prepare`, when it must run, downloads or names what is missing).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xai.data.sources import raw_fingerprint
from xai.io import check_writable, save_json
from xai.pipeline import cli
from xai.pipeline.config import load_config
from xai.pipeline.paths import resolve_input


def none_present(fingerprint: Mapping[str, Any], recorded: Mapping[str, Any]) -> bool:
    """Whether `fingerprint` finds none of the raw files of the data set `recorded` lists (it is
    not on this machine, as in a clone that pulled the prepared set instead), rather than other
    or changed files."""
    files, old = fingerprint["files"], recorded.get("files") or {}
    if recorded.get("dataset") != fingerprint["dataset"]:
        return False
    if any(digest is not None for digest in files.values()):
        return False
    return bool(old) and all(any(k == name or k.startswith(f"{name}/") for name in files)
                             for k in old)


def _recorded(path: str) -> dict[str, Any] | None:
    """The fingerprint written before, if there is a readable one."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", required=True, help="output: the raw files' md5s (JSON)")
    args = parser.parse_args(argv)
    cfg = load_config(args.params)
    check_writable(args.out)
    fingerprint = raw_fingerprint(cfg.data, resolve_input(cfg.data.root))
    files = fingerprint["files"]
    recorded = _recorded(args.out)
    if recorded is not None and none_present(fingerprint, recorded):
        print(f"raw_data: none of the raw files of {cfg.data.dataset} is here; the record of "
              f"those the prepared set was made from stays in {args.out}")
        return
    save_json(fingerprint, args.out)
    missing = [name for name, digest in files.items() if digest is None]  # type: ignore[union-attr]
    print(f"raw_data: {len(files)} raw files of {cfg.data.dataset}"  # type: ignore[arg-type]
          + (f", {len(missing)} missing (prepare downloads them when data.download is true)"
             if missing else ""))


if __name__ == "__main__":
    cli.run(main, "raw_data")
