"""Test-only machine faults for stage subprocesses: tests/test_faults.py puts this folder first on
PYTHONPATH, so Python imports it at start-up; without the variables below it does nothing.

- `XAI_TEST_FULL_DISK=<prefix>`: every `os.write` to a file whose path starts with `<prefix>`
  fails with ENOSPC, as on a filesystem that has filled up (`xai.io` writes through `os.write`).
- `XAI_TEST_UNWRITABLE=<folder>`: creating a file in `<folder>` with `os.open` (what
  `tempfile.mkstemp` does) fails with EACCES, as in a folder of another owner; root ignores
  chmod, so a test cannot make one for real.
- `XAI_TEST_SQLITE_FULL=1`: a SQLAlchemy session that commits MLflow metrics fails as sqlite does
  when its disk is full ("database or disk is full"), inside MLflow's sqlite store; the run is
  created and its params logged first.
- `XAI_TEST_NO_XAI=1`: `import xai` fails, as where this repository is not installed (what a
  served MLflow Model must not need: tests/test_serving.py).
"""

from __future__ import annotations

import errno
import os

if os.environ.get("XAI_TEST_NO_XAI"):
    import sys

    sys.modules["xai"] = None  # type: ignore[assignment]  # `import xai` raises ImportError

_FULL = os.environ.get("XAI_TEST_FULL_DISK")
_DENIED = os.environ.get("XAI_TEST_UNWRITABLE")

if _FULL:
    _write = os.write

    def _full_write(fd: int, data: bytes) -> int:
        try:
            name = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = ""
        if name.startswith(_FULL):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _write(fd, data)

    os.write = _full_write

if _DENIED:
    _open = os.open

    def _denied_open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        if flags & os.O_CREAT and os.path.dirname(os.path.abspath(path)) == _DENIED:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return _open(path, flags, mode, dir_fd=dir_fd)

    os.open = _denied_open

if os.environ.get("XAI_TEST_SQLITE_FULL"):
    import sqlite3

    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    _add_all_real, _commit = Session.add_all, Session.commit

    def _add_all(self: Session, instances) -> None:  # type: ignore[no-untyped-def]
        instances = list(instances)
        if any(type(obj).__name__ == "SqlMetric" for obj in instances):
            self.info["xai_metrics"] = True  # (a query before the commit flushes them)
        _add_all_real(self, instances)

    def _full_commit(self: Session) -> None:
        if self.info.pop("xai_metrics", False):
            raise OperationalError("INSERT INTO metrics", {},
                                   sqlite3.OperationalError("database or disk is full"))
        _commit(self)

    Session.add_all = _add_all  # type: ignore[method-assign]
    Session.commit = _full_commit  # type: ignore[method-assign]
