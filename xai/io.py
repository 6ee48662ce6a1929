"""Atomic, reproducible file output and safe loading.

Every output goes to a temporary file in the target's folder and is renamed into place only once it
is complete, so an interrupted stage never leaves a half-written file for DVC to cache. Tensors are
serialised to memory first: `torch.save` given a path names the archive after the file, which would
make the bytes depend on the temporary name.

A stage writes several outputs; inside `transaction()` every write is staged (complete and fsynced
beside its target) and all of them are renamed into place together when the block ends, so an
interrupted stage leaves its previous outputs as they were. POSIX has no rename of several files at
once, so the rename phase is made as safe as it can be: SIGINT and SIGTERM are held back during it
(they take effect once every output is in place), and a journal beside the first output lists the
staged files first, so that a SIGKILL or power loss inside the phase (microseconds) is completed by
the next transaction writing into that folder, and `load_torch` refuses a file whose commit is
pending meanwhile. DVC itself records a stage only after it exits 0, so `dvc repro` re-runs a
stage killed at any point.

The machine's own faults become one-line errors once the temporary file is removed: a full disk
(or used-up quota) at any write is a `DiskFullError` naming the file and the filesystem's mount
point with its free bytes, and a folder that cannot be written (read-only mount, wrong owner) an
`UnwritableError` naming it; `check_writable` finds the latter when a stage starts, before any
work.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import dataclasses
import errno
import glob
import hashlib
import io
import json
import os
import re
import signal
import tempfile
import threading
import zipfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import torch

from xai.errors import CheckpointError, DiskFullError, UnwritableError, XaiError


def _file_mode() -> int:
    """The mode a plainly created file gets here (0o666 less the umask); mkstemp uses 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()  # read once: flipping the umask is not thread-safe


JOURNAL_SUFFIX = ".xai-commit"  # `.{first output}.xai-commit`: a commit in progress

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_DENIED = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def _existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: str | Path) -> Path:
    """The mount point of the filesystem holding `path` (or its nearest existing ancestor)."""
    path = _existing(Path(path))
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def machine_error(exc: OSError, path: str | Path, folder: bool = False) -> XaiError | None:
    """The one-line error for a full disk or an unwritable folder met writing `path` (`folder`:
    `path` is an output folder), or None for any other `OSError`."""
    path = Path(path)
    subject = f"cannot write outputs into {path}" if folder else f"cannot write {path}"
    if exc.errno in _FULL:
        mount = mount_point(path if folder else path.parent)
        try:
            stat = os.statvfs(mount)
            free = f"{stat.f_bavail * stat.f_frsize} bytes free"
        except OSError:
            free = "free space unknown"
        what = ("the disk quota is used up" if exc.errno == errno.EDQUOT
                else "no space left on device")
        return DiskFullError(f"{subject}: the disk is full ({what}; filesystem mounted at {mount}, "
                             f"{free}); free space there and re-run the stage, the previous "
                             "outputs are as they were")
    if exc.errno in _DENIED:
        where = _existing(path if folder else path.parent)
        return UnwritableError(f"{subject}: the folder {where} is not writable "
                               f"({os.strerror(exc.errno)}); make it writable (owner, mode, "
                               "read-only mount) or write the outputs elsewhere")
    return None


@contextlib.contextmanager
def _machine_faults(path: str | Path, folder: bool = False) -> Iterator[None]:
    """Turn a full disk or an unwritable folder inside the block into its one-line error."""
    try:
        yield
    except OSError as exc:
        error = machine_error(exc, path, folder)
        if error is None:
            raise
        raise error from None


def _probe(folder: Path) -> None:
    """Create and remove a temporary file in `folder` (root passes `os.access` on a read-only
    mount, so only trying tells)."""
    fd, tmp = tempfile.mkstemp(prefix=".xai-probe.", suffix=".tmp", dir=folder)
    os.close(fd)
    os.unlink(tmp)


def check_writable(*paths: str | Path | None, probe: Callable[[Path], None] = _probe) -> None:
    """Fail with one line naming the folder unless every output's folder can be written to.

    Stages call it with their output paths before any work, so it creates nothing: a missing
    folder is judged by its nearest existing ancestor, where the writes will create it, and
    `probe` tries each such folder once.
    """
    for folder in dict.fromkeys(Path(p).parent for p in paths if p):
        with _machine_faults(folder, folder=True):
            probe(_existing(folder))


class Transaction:
    """Outputs staged by `atomic_path` inside `transaction()`, renamed into place by `commit`."""

    def __init__(self) -> None:
        self.staged: dict[Path, Path] = {}  # target -> complete temporary file beside it
        self.committed = False

    def discard(self) -> None:
        """Remove every staged file; the targets keep their previous contents."""
        with _signals_held():  # a second interrupt must not leave staged files behind
            for tmp in self.staged.values():
                tmp.unlink(missing_ok=True)
            self.staged = {}

    def commit(self) -> None:
        """Rename every staged file onto its target (SIGINT/SIGTERM wait until all are done)."""
        if self.committed:
            raise RuntimeError("transaction already committed")  # a bug in the caller
        self.committed = True
        if not self.staged:
            return
        with _signals_held():
            for folder in {target.parent for target in self.staged}:
                recover(folder)
            first = next(iter(self.staged))
            journal = first.parent / f".{first.name}{JOURNAL_SUFFIX}"
            entries = [[str(tmp), str(target)] for target, tmp in self.staged.items()]
            with _machine_faults(journal):
                try:
                    _write_durably(journal, json.dumps(entries).encode())
                except BaseException:  # no rename has happened: the targets are as they were
                    journal.unlink(missing_ok=True)
                    raise
            _replace_all(entries)
            journal.unlink()
            _sync_folder(journal.parent)
        self.staged = {}


_ACTIVE: contextvars.ContextVar[Transaction | None] = contextvars.ContextVar("xai_transaction",
                                                                             default=None)


@contextlib.contextmanager
def transaction() -> Iterator[Transaction]:
    """Stage every output written inside the block; commit them all together when it ends.

    An exception (an interrupt included) discards the staged files, leaving every target as it
    was. `commit()` may be called early, e.g. before logging the outputs somewhere else; later
    writes in the block then go straight to their targets (each still atomic).
    """
    if _ACTIVE.get() is not None:
        raise RuntimeError("transactions do not nest")  # a bug in the caller
    txn = Transaction()
    token = _ACTIVE.set(txn)
    try:
        yield txn
        _ACTIVE.reset(token)
        token = None
        if not txn.committed:
            txn.commit()
    finally:
        if token is not None:
            _ACTIVE.reset(token)
        txn.discard()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back inside the block (main thread) and deliver them after it.

    The handlers are swapped, not the signal mask: Python runs a handler some bytecodes after
    the signal arrived, so one that arrived just before the block would otherwise still fire in it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: arrived.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(arrived):
            signal.raise_signal(sig)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so the renames in it survive a power loss."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_all(entries: list[list[str]]) -> None:
    for tmp, target in entries:
        if os.path.exists(tmp):
            os.replace(tmp, target)
    for folder in {Path(target).parent for _, target in entries}:
        _sync_folder(folder)


def recover(folder: str | Path) -> list[Path]:
    """Complete commits in `folder` that a SIGKILL or power loss cut short; returns the files.

    A journal is written only once every staged file is complete, so rolling forward gives the
    full new set of outputs.
    """
    done: list[Path] = []
    for journal in sorted(Path(folder).glob(f".*{JOURNAL_SUFFIX}")):
        try:
            entries = json.loads(journal.read_text())
        except (OSError, ValueError):  # cut short while being written: its commit never began
            journal.unlink(missing_ok=True)
            continue
        _replace_all(entries)
        journal.unlink(missing_ok=True)
        done += [Path(target) for _, target in entries]
    return done


def pending_commit(path: str | Path) -> Path | None:
    """The journal of an unfinished commit that includes `path`, if there is one."""
    path = Path(path)
    for journal in path.parent.glob(f".*{JOURNAL_SUFFIX}"):
        try:
            targets = {Path(target) for _, target in json.loads(journal.read_text())}
        except (OSError, ValueError):
            continue
        if path.resolve() in {t.resolve() for t in targets}:
            return journal
    return None


def remove_stale_temps(path: str | Path, keep: Collection[Path] = ()) -> None:
    """Delete temporary files of `path` that a killed writer left behind (a SIGKILL gives no
    chance to clean up); one stage alone writes a given output, so any not in `keep` is stale."""
    path = Path(path)
    name = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if name.fullmatch(stale.name) and stale not in keep:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, staged: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    Inside `transaction()` the complete file is staged and replaces `path` at the commit instead;
    `staged=False` writes through at once (for resume checkpoints, which are not stage outputs).
    """
    path = Path(path)
    with _machine_faults(path):  # raised once the temporary file is gone
        path.parent.mkdir(parents=True, exist_ok=True)
        txn = _ACTIVE.get() if staged else None
        remove_stale_temps(path, set(txn.staged.values()) if txn is not None else set())
        tmp: str | None = None
        try:
            with _signals_held():  # an interrupt inside mkstemp would leave its file behind
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp",
                                           dir=path.parent)
                os.close(fd)
            tmp_path = Path(tmp)
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fchmod(fh.fileno(), _FILE_MODE)
                os.fsync(fh.fileno())
            if txn is None or txn.committed:
                os.replace(tmp_path, path)
            else:
                earlier = txn.staged.pop(path.resolve(), None)
                if earlier is not None:  # written twice in one transaction: the last one counts
                    earlier.unlink(missing_ok=True)
                txn.staged[path.resolve()] = tmp_path
        except BaseException:
            if tmp is not None:
                with _signals_held():
                    Path(tmp).unlink(missing_ok=True)
            raise


def write_bytes(path: str | Path, data: bytes, staged: bool = True) -> None:
    """Write `data` to `path` atomically (staged inside a `transaction`)."""
    with atomic_path(path, staged) as tmp:
        _write_all(tmp, data)


def _write_all(path: Path, data: bytes) -> None:
    """Write `data` to `path` with `os.write` (which may write part and must be called again)."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view[:1 << 24])
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            view = view[written:]
    finally:
        os.close(fd)


def torch_bytes(obj: Any) -> bytes:
    """Serialise `obj` with torch.save; the same object always gives the same bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_torch(obj: Any, path: str | Path, staged: bool = True) -> None:
    """torch.save `obj` (tensors, numbers, strings, lists, dicts) to `path` atomically."""
    write_bytes(path, torch_bytes(obj), staged)


def save_json(obj: Any, path: str | Path) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def load_json(path: str | Path) -> Any:
    """A JSON file another stage wrote; `CheckpointError` naming it when missing or unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found; run the stage that writes it first") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable JSON file ({exc})") from None


def save_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write rows of equal keys (e.g. one per epoch, a DVC plots file) as CSV, atomically."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_bytes(path, out.getvalue().encode())


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes, the hash DVC records for outputs in dvc.lock."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SavedFields:
    """A dataclass saved as a mapping of its fields, some spelled by an older name in the files
    (`SAVED_NAMES`: field -> saved name), so renaming a field in code leaves every saved file's
    bytes, and the files already written, as they are."""

    SAVED_NAMES: ClassVar[dict[str, str]] = {}
    #: Fields added later, written only when they differ from their default, so files saved before
    #: they existed load as they did and a default model saves to the same bytes as before.
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ()

    def to_state(self) -> dict[str, Any]:
        """The fields, in order, as a saved file holds them."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {self.SAVED_NAMES.get(k, k): v for k, v in dataclasses.asdict(self).items()
                if k not in self.LATER_FIELDS or v != defaults[k]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """Rebuild from `to_state`'s mapping."""
        code_name = {saved: name for name, saved in cls.SAVED_NAMES.items()}
        return cls(**{code_name.get(k, k): v for k, v in state.items()})


def load_torch(path: str | Path, *, kind: str, required: Sequence[str] = (),
               older_kinds: Sequence[str] = ()) -> dict[str, Any]:
    """Load a file we wrote with `save_torch`, with `weights_only=True`.

    `kind` names what the file should be (used in messages and checked against the file's own
    `kind` entry when it has one; `older_kinds` are earlier names of the same format, still
    accepted); `required` lists keys the file must hold. Anything else (a
    missing file, a truncated or foreign file, missing keys) raises `CheckpointError`.
    """
    path = Path(path)
    journal = pending_commit(path)
    if journal is not None:
        raise CheckpointError(f"{path} belongs to a commit that was cut short ({journal}); re-run "
                              "the stage that writes it (dvc repro does)")
    if not path.is_file():
        raise CheckpointError(f"{kind} file {path} not found; run the stage that writes it first")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable {kind} file, truncated or corrupt "
                              f"({first})") from None
    except Exception as exc:  # noqa: BLE001 - the unpickler raises many types for foreign files
        raise CheckpointError(
            f"{path} is not a {kind} file written by xai ({type(exc).__name__})"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a {kind} file written by xai (not a mapping)")
    if "kind" in obj and obj["kind"] != kind and obj["kind"] not in older_kinds:
        raise CheckpointError(f"{path} holds a {obj['kind']!r}, expected a {kind!r}")
    absent = [key for key in required if key not in obj]
    if absent:
        raise CheckpointError(f"{path} is not a {kind} file: missing {', '.join(absent)}")
    return obj
