"""Running a stage script: clean one-line errors, clean interrupts, exit codes DVC understands."""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import yaml

from xai.errors import DiskFullError, UnwritableError, XaiError
from xai.io import recover, remove_stale_temps
from xai.pipeline.config import param_error

EXIT_USER_ERROR = 2  # bad params, missing or damaged inputs (`XaiError.exit_code`)
EXIT_DISK_FULL = DiskFullError.exit_code  # 3: an output's filesystem is full
EXIT_UNWRITABLE = UnwritableError.exit_code  # 4: an output folder cannot be written
EXIT_INTERRUPTED = 130


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _written_paths(stage: dict) -> list[str]:
    """The files a stage writes: its outs, metrics and plots, and its resume checkpoint (the
    path after `--checkpoint` in its command, outside DVC's outputs)."""
    entries = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    paths = [next(iter(e)) if isinstance(e, dict) else e for e in entries]
    cmd = stage.get("cmd")
    words = shlex.split(cmd) if isinstance(cmd, str) else []
    return paths + [after for word, after in itertools.pairwise(words) if word == "--checkpoint"]


def sweep_stale_temps(dvc_yaml: str | Path = "dvc.yaml") -> None:
    """Finish what a SIGKILLed stage left behind in the folders of every file a stage writes:
    complete a commit it cut short (`xai.io.recover`), then delete its temporary files.

    A SIGKILL gives a stage no chance to clean up, and `dvc repro` may then restore its outputs
    from the run cache without running it. DVC runs one stage at a time in a workspace, so when a
    stage starts no other is writing (under torchrun only rank 0 sweeps)."""
    path = Path(dvc_yaml)
    if os.environ.get("RANK", "0") != "0" or not path.is_file():
        return
    written = [path.parent / p for stage in (yaml.safe_load(path.read_text()) or {})
               .get("stages", {}).values() for p in _written_paths(stage)]
    for folder in dict.fromkeys(p.parent for p in written):
        if folder.is_dir():
            recover(folder)
    for output in written:
        remove_stale_temps(output)


def run(main: Callable[[list[str] | None], None], name: str) -> None:
    """Call a stage's `main`, turning user errors and interrupts into short messages.

    SIGTERM is handled like SIGINT, so `finally` blocks and atomic writers clean up: a killed
    stage leaves no partial output (its outputs are committed together, see `xai.io`). User
    errors (bad params, missing data, foreign checkpoints) print one line and exit 2, without a
    traceback; so do the machine's faults, with their own codes: a full disk at any output exits
    3, an output folder that cannot be written 4 (stages check theirs before any work).
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    sweep_stale_temps()
    try:
        main(None)
    except XaiError as exc:
        code = exc.exit_code
        print(f"{name}: error: {param_error(exc)}", file=sys.stderr)
        sys.exit(code)
    except KeyboardInterrupt as exc:
        where = f" ({exc})" if str(exc) and str(exc) not in ("SIGINT", "SIGTERM") else ""
        print(f"{name}: interrupted{where}; no partial output was written", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
