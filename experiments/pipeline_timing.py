"""The whole pipeline as a new user runs it, timed: a fresh clone, one `dvc exp run -S ...`.

    python experiments/pipeline_timing.py -S data=cifar10_jpeg -S recipe=cifar10_cpu \
        -S data.root=../shared/datasets > experiments/cifar10_cpu_epyc_pipeline.json
    python experiments/pipeline_timing.py -S recipe=quick -S data.root=../shared/datasets

Clones this repository's HEAD beside it, runs `dvc exp run` there with the given overrides
(presets and keys, as `dvc exp run -S` takes them, a relative `data.root` made relative to the
clone; checked first with the pipeline's own config checker, so a typo or a recipe that does not
fit the data fails before the clone), and prints one JSON
object: the overrides, the commit, the composed params.yaml, the host, each stage's wall seconds
(from the moment DVC starts it to the next stage's start, so DVC's own work between stages is
counted), the total, the experiment's name as `dvc exp show` lists it, and every stage's
`metrics/*.json`. `--figures DIR` keeps the run's figures; `--until STAGE` runs the stages up to
that one (`dvc exp run STAGE`); `--workdir DIR` runs in the new folder DIR instead of a temporary
one and keeps it, models included.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xai.errors import ConfigError
from xai.pipeline.bench import host
from xai.pipeline.presets import compose

STAGE_START = re.compile(r"^Running stage '([^']+)':")


def stage_seconds(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Each stage's seconds from timestamped output lines: from its `Running stage` line to the
    next one's (the last to `end`); stages DVC skipped do not appear."""
    starts = [(t, m.group(1)) for t, line in lines if (m := STAGE_START.match(line))]
    ends = [t for t, _ in starts[1:]] + [end]
    return {name: round(stop - start, 1) for (start, name), stop in zip(starts, ends)}


def rooted(overrides: list[str], work: Path) -> list[str]:
    """`overrides` with a relative `data.root` made relative to the clone `work` instead of this
    repository, so that it names the same folder wherever the clone is."""
    return [f"data.root={os.path.relpath(ROOT / o.partition('=')[2], work)}"
            if o.startswith("data.root=") and not Path(o.partition("=")[2]).is_absolute() else o
            for o in overrides]


def listed_experiment(work: Path, env: dict[str, str]) -> str:
    """The name `dvc exp show` lists for the workspace's newest experiment; ConfigError if none."""
    shown = json.loads(subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=work, env=env, check=True,
        capture_output=True, text=True).stdout)
    names = [exp.get("name") for row in shown for exp in (row.get("experiments") or [])]
    if not any(names):
        raise ConfigError(f"dvc exp show lists no experiment in {work}")
    return next(name for name in names if name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[],
                        metavar="OVERRIDE", help="as `dvc exp run -S`: data=NAME, recipe=NAME, "
                        "dotted.key=value")
    parser.add_argument("--figures", type=Path, help="copy the run's figures here")
    parser.add_argument("--until", metavar="STAGE",
                        help="run the stages up to this one (the stages before it too)")
    parser.add_argument("--workdir", type=Path,
                        help="run in this new folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    if args.workdir is not None and args.workdir.exists():
        raise ConfigError(f"--workdir {args.workdir}: exists; name a new folder")
    _, cfg = compose(args.overrides, ROOT)  # refuses a typo or a misfit before any work
    stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    if args.until is not None and args.until not in stages:
        raise ConfigError(f"--until {args.until}: no such stage; allowed: {', '.join(stages)}")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}
    kept = nullcontext(args.workdir.resolve()) if args.workdir else None
    with kept or tempfile.TemporaryDirectory(prefix="xai-timing-", dir=ROOT.parent) as work:
        work = Path(work)
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(work)], check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, check=True,
                                capture_output=True, text=True).stdout.strip()
        command = [sys.executable, "-m", "dvc", "exp", "run",
                   *[f"-S{override}" for override in rooted(args.overrides, work)],
                   *([args.until] if args.until else [])]
        lines: list[tuple[float, str]] = []
        start = time.perf_counter()
        with subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
            for line in proc.stdout:  # type: ignore[union-attr]
                lines.append((time.perf_counter() - start, line.rstrip("\n")))
                print(line, file=sys.stderr, end="", flush=True)
        total = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"{' '.join(command)} failed (exit {proc.returncode})")
        params = yaml.safe_load((work / "params.yaml").read_text())
        metrics = {p.stem: json.loads(p.read_text())
                   for p in sorted((work / "metrics").glob("*.json"))}
        experiment = listed_experiment(work, env)
        if args.figures:
            shutil.copytree(work / "figures", args.figures, dirs_exist_ok=True)
    print(json.dumps({"overrides": args.overrides, "presets": cfg.preset.names(),
                      "commit": commit, "params": params, "host": host(),
                      "stage_seconds": stage_seconds(lines, total),
                      "total_seconds": round(total, 1), "experiment": experiment,
                      "metrics": metrics}, indent=1))


if __name__ == "__main__":
    main()
