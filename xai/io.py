"""Atomic, reproducible file output and safe loading.

Every output goes to a temporary file in the target's folder and is renamed into place only once it
is complete, so an interrupted stage never leaves a half-written file for DVC to cache. Tensors are
serialised to memory first: `torch.save` given a path names the archive after the file, which would
make the bytes depend on the temporary name.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from xai.errors import CheckpointError


def _file_mode() -> int:
    """The mode a plainly created file gets here (0o666 less the umask); mkstemp uses 0o600."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()  # read once: flipping the umask is not thread-safe


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fchmod(fh.fileno(), _FILE_MODE)
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def torch_bytes(obj: Any) -> bytes:
    """Serialise `obj` with torch.save; the same object always gives the same bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_torch(obj: Any, path: str | Path) -> None:
    """torch.save `obj` (tensors, numbers, strings, lists, dicts) to `path` atomically."""
    write_bytes(path, torch_bytes(obj))


def save_json(obj: Any, path: str | Path) -> None:
    """Write `obj` as indented, key-sorted JSON, atomically."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


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


def load_torch(path: str | Path, *, kind: str, required: Sequence[str] = ()) -> dict[str, Any]:
    """Load a file we wrote with `save_torch`, with `weights_only=True`.

    `kind` names what the file should be (used in messages and checked against the file's own
    `kind` entry when it has one); `required` lists keys the file must hold. Anything else (a
    missing file, a truncated or foreign file, missing keys) raises `CheckpointError`.
    """
    path = Path(path)
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
    if "kind" in obj and obj["kind"] != kind:
        raise CheckpointError(f"{path} holds a {obj['kind']!r}, expected a {kind!r}")
    absent = [key for key in required if key not in obj]
    if absent:
        raise CheckpointError(f"{path} is not a {kind} file: missing {', '.join(absent)}")
    return obj
