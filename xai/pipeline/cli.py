"""Running a stage script: clean one-line errors, clean interrupts, exit codes DVC understands."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

from xai.errors import XaiError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(main: Callable[[list[str] | None], None], name: str) -> None:
    """Call a stage's `main`, turning user errors and interrupts into short messages.

    SIGTERM is handled like SIGINT, so `finally` blocks and atomic writers clean up: a killed
    stage leaves no partial output. User errors (bad params, missing data, foreign checkpoints)
    print one line and exit 2, without a traceback.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        main(None)
    except XaiError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; no partial output was written", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
