"""The whole pipeline at a named setting, end to end, timed stage by stage.

    python experiments/pipeline_timing.py experiments/cifar_cpu_setting.json \
        --data-root ../shared/datasets > experiments/cifar_cpu_pipeline.json

Clones this repository's HEAD into a temporary directory, sets the keys of the setting file's
`params` in its params.yaml (dotted keys, as `dvc exp run -S` takes them; `data.root` is
`--data-root`), then runs `dvc repro <stage>` for every stage in dvc.yaml's order, so each call
runs that stage alone. Prints one JSON object: the setting, the commit and params.yaml it ran
with, the host, each stage's wall seconds (DVC's own overhead included), the total, and every
stage's `metrics/*.json`. `--figures DIR` keeps the run's figures for looking at; `--until STAGE` stops
after that stage; `--workdir DIR` runs in `DIR` (a new folder) instead and keeps it, models included,
for probes that read a run's models (`experiments/cifar_probes.py`). `--resume DIR` continues such a
kept run at this HEAD: its code becomes HEAD's (its params.yaml, dvc.lock and the stages' outputs
stay), params.yaml is written from HEAD's and the setting as above, and `dvc repro` re-runs only the
stages a change affects; `resumed` names the commit the kept run's code was at (its last resume's,
or its clone's) and the stages that ran, the seconds of the others are DVC's check alone.
"""

from __future__ import annotations

import argparse
import json
import os
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
from xai.pipeline.config import Config, parse_section, set_dotted


def configured(params: dict, overrides: dict[str, object]) -> dict:
    """`params` (params.yaml as read) with the dotted `overrides` set, validated as the stages
    validate it, so a typo or a bad value fails here rather than minutes into the run."""
    for dotted, value in overrides.items():
        set_dotted(params, dotted, value)
    parse_section(Config, params)
    return params


def stages_until(stages: list[str], until: str | None) -> list[str]:
    """`stages` (dvc.yaml's order) up to and including `until` (None: all of them)."""
    if until is None:
        return stages
    if until not in stages:
        raise ConfigError(f"--until {until}: no such stage; allowed: {', '.join(stages)}")
    return stages[:stages.index(until) + 1]


def dvc_outputs(dvc_yaml: dict) -> set[str]:
    """Every path a stage of `dvc_yaml` writes (outs, metrics, plots), as written there."""
    paths = set()
    for stage in dvc_yaml["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.add(entry if isinstance(entry, str) else next(iter(entry)))
    return paths


def update_code(work: Path, source: Path = ROOT) -> tuple[str, str]:
    """Check out `source`'s HEAD in the kept run `work`, all but its params.yaml, dvc.lock and
    stage outputs (what the run made), and move the run's HEAD there, so a later resume starts
    from this code; return the commit the run's code was at and the new one."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=work, check=True, capture_output=True,
                              text=True).stdout.strip()
    ran_at = git("rev-parse", "HEAD")
    git("fetch", "--quiet", str(source), "HEAD")
    head = git("rev-parse", "FETCH_HEAD")
    made = {"params.yaml", "dvc.lock",
            *dvc_outputs(yaml.safe_load((work / "dvc.yaml").read_text()))}
    changed = [path for path in git("diff", "--name-only", ran_at, head).splitlines()
               if not any(path == out or path.startswith(out.rstrip("/") + "/") for out in made)]
    present = set(git("ls-tree", "-r", "--name-only", head).splitlines())
    if updated := [path for path in changed if path in present]:
        git("checkout", head, "--", *updated)
    for path in set(changed) - present:
        (work / path).unlink(missing_ok=True)
    git("reset", "--soft", head)  # else a file changed and changed back stays at the middle version
    return ran_at, head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setting", type=Path)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--figures", type=Path, help="copy the run's figures here")
    parser.add_argument("--until", metavar="STAGE",
                        help="stop after this stage (the stages before it still run)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workdir", type=Path,
                       help="run in this new folder and keep it (default: a temporary one)")
    where.add_argument("--resume", type=Path, metavar="DIR",
                       help="continue the run kept in DIR (an earlier --workdir) at this HEAD")
    args = parser.parse_args()
    if args.workdir is not None and args.workdir.exists():
        raise ConfigError(f"--workdir {args.workdir}: exists; name a new folder")
    if args.resume is not None and not (args.resume / "xai" / "dvc.lock").is_file():
        raise ConfigError(f"--resume {args.resume}: no kept run there (expected "
                          f"{args.resume / 'xai' / 'dvc.lock'}, as --workdir leaves it)")
    setting = json.loads(args.setting.read_text())
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1"}
    folder = args.workdir or args.resume
    kept = nullcontext(folder.resolve()) if folder else None
    resumed = None
    with kept or tempfile.TemporaryDirectory(prefix="xai-timing-") as tmp:
        work = Path(tmp) / "xai"
        if args.resume:
            ran_at, commit = update_code(work)
            resumed = {"from_commit": ran_at, "stages_run": []}
        else:
            subprocess.run(["git", "clone", "--quiet", str(ROOT), str(work)], check=True)
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, check=True,
                                    capture_output=True, text=True).stdout.strip()
        committed = subprocess.run(["git", "show", f"{commit}:params.yaml"], cwd=work, check=True,
                                   capture_output=True, text=True).stdout
        params = configured(yaml.safe_load(committed),
                            {**setting["params"], "data.root": str(args.data_root.resolve())})
        (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        stages = stages_until(list(yaml.safe_load((work / "dvc.yaml").read_text())["stages"]),
                              args.until)
        seconds: dict[str, float] = {}
        for stage in stages:
            start = time.perf_counter()
            said = subprocess.run([sys.executable, "-m", "dvc", "repro", stage], cwd=work,
                                  env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
            print(said, file=sys.stderr, end="")
            seconds[stage] = round(time.perf_counter() - start, 1)
            if resumed is not None and f"'{stage}' didn't change" not in said:
                resumed["stages_run"].append(stage)
            print(f"{stage}: {seconds[stage]} s", file=sys.stderr, flush=True)
        metrics = {p.stem: json.loads(p.read_text())
                   for p in sorted((work / "metrics").glob("*.json"))}
        if args.figures:
            shutil.copytree(work / "figures", args.figures, dirs_exist_ok=True)
    print(json.dumps({"setting": setting, "commit": commit, "params": params,
                      "host": host(),
                      "stage_seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
                      **({"resumed": resumed} if resumed else {}), "metrics": metrics}, indent=1))


if __name__ == "__main__":
    main()
