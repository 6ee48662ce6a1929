"""Where inputs outside DVC's control live: the project root, even inside `dvc exp run --queue`.

Queued experiments run in temporary copies of the repository; DVC sets `DVC_ROOT` to the parent
repository there, so the raw data and the MLflow store resolve to the user's workspace, not to the
temporary copy. Outputs are always written relative to the working directory (DVC's business).
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The user's repository root: `DVC_ROOT` when DVC runs us, else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def resolve_input(path: str | Path) -> Path:
    """An absolute path for an input named in params.yaml (relative paths: to the project root)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def in_queued_experiment() -> bool:
    """Whether DVC runs us in a temporary copy of the repository (`dvc exp run --queue`)."""
    return project_root() != Path.cwd().resolve()
