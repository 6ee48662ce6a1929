"""Presets: params.yaml composed from `conf/` the way `dvc exp run -S` composes it.

`conf/config.yaml` holds every knob with the MNIST defaults and a defaults list naming one preset
of each group: `conf/data/<name>.yaml` (where the images come from) and `conf/recipe/<name>.yaml`
(what is trained and measured on them, and for how long). With DVC's Hydra composition enabled
(`.dvc/config`), `dvc exp run -S data=cifar10_jpeg -S recipe=cifar10_cpu -S vibi.beta=0.01`
writes params.yaml from them and runs the stages whose params changed. This module composes the
same file with DVC's own function, so that a user can write and check a composition before
spending any time on it:

    python -m xai.pipeline.presets data=cifar10_jpeg recipe=cifar10_cpu data.root=../shared/datasets
    python -m xai.pipeline.presets --list

The first writes params.yaml (atomically, after the pipeline's config checker has accepted it) and
prints the keys that differ from the defaults; a preset that does not exist, a key that no preset
has or a recipe made for other images is refused with one line, and params.yaml is left as it was.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from xai.errors import ConfigError, XaiError
from xai.io import write_bytes
from xai.pipeline.config import Config, flatten, parse_section
from xai.pipeline.paths import project_root

GROUPS = ("data", "recipe")


def conf_dir(root: Path | None = None) -> Path:
    """The `conf/` folder of the project at `root` (default: the project root)."""
    return (root or project_root()) / "conf"


def choices(root: Path | None = None) -> dict[str, list[str]]:
    """The presets of each group, by name: the YAML files of `conf/<group>/`."""
    return {group: sorted(p.stem for p in (conf_dir(root) / group).glob("*.yaml"))
            for group in GROUPS}


def compose_text(overrides: list[str], root: Path | None = None) -> str:
    """params.yaml's text for these Hydra overrides (`data=cifar10_jpeg`, `vibi.k=8`), byte for byte
    what `dvc exp run -S ...` writes; a Hydra error becomes one ConfigError line."""
    from dvc.utils.hydra import compose_and_dump
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    folder = conf_dir(root)
    if not (folder / "config.yaml").is_file():
        raise ConfigError(f"{folder / 'config.yaml'} not found: presets need the project's conf/")
    with tempfile.TemporaryDirectory(prefix="xai-presets-") as tmp:
        out = Path(tmp) / "params.yaml"
        try:
            compose_and_dump(out, str(folder), None, "config", str(folder.parent), overrides)
        except (HydraException, OmegaConfBaseException) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            for group, names in choices(root).items():
                if f"'{group}/" in first:
                    first += f"; allowed {group} presets: {', '.join(names)}"
            raise ConfigError(f"cannot compose {' '.join(overrides) or 'the defaults'}: {first}"
                              ) from None
        return out.read_text()


def compose(overrides: list[str], root: Path | None = None) -> tuple[str, Config]:
    """The composed params.yaml text and the config it gives, checked as every stage checks it."""
    text = compose_text(overrides, root)
    return text, parse_section(Config, yaml.safe_load(text))


def differences(params: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys whose values in `params` differ from `base`'s."""
    flat, defaults = flatten(params), flatten(base)
    return {k: v for k, v in flat.items() if defaults.get(k, object()) != v}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Compose params.yaml from conf/ as `dvc exp run -S` does, and check it.")
    parser.add_argument("overrides", nargs="*",
                        help="Hydra overrides: data=NAME, recipe=NAME, dotted.key=value")
    parser.add_argument("--out", type=Path, default=Path("params.yaml"),
                        help="where to write the composition (default: params.yaml)")
    parser.add_argument("--list", action="store_true", help="list the presets of each group")
    args = parser.parse_args(argv)
    try:
        if args.list:
            for group, names in choices().items():
                print(f"{group}: {', '.join(names)}")
            return
        text, _ = compose(args.overrides)
        changed = differences(yaml.safe_load(text), yaml.safe_load(compose_text([])))
        write_bytes(args.out, text.encode())
    except XaiError as exc:
        print(f"presets: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    print(f"wrote {args.out}: {len(changed)} keys differ from the defaults")
    for key, value in changed.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
