"""A team's shared setup: pulling from the DVC remote with the checks DVC leaves out, and the
MLflow server on a database.

    python -m xai.pipeline.team verify              # re-hash this workspace's objects in the cache
    python -m xai.pipeline.team pull [-r NAME]      # verify, `dvc pull`, a failure in one line
    python -m xai.pipeline.team server --db URI --artifacts DIR [--host H] [--port P] [...]

DVC 3.67 trusts its local cache: an object whose bytes changed while its size and modification
time did not (a disk's bit rot, a copy that kept the time) passes `dvc status`, and `dvc checkout`
and `dvc pull` copy it into the workspace. `verify` re-hashes every object the workspace's
dvc.lock and .dvc files name, names each damaged one with the output it holds and removes it
(with a workspace file holding the same bytes), so that the next pull fetches it again. `pull`
verifies, runs `dvc pull` and says in one line what failed: a remote that does not answer, one
that refuses the login, objects the remote does not have (named, with `dvc push` on the machine
that made them as the fix) or holds damaged (rejected by the remote's `verify` setting).

`server` checks that the database answers, then starts `mlflow server` on it with proxied
artifact storage (MLflow itself keeps retrying a database that is down, logging tracebacks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvc_data.hashfile.hash import file_md5  # DVC's own hash, without its cache of hashes

#: DVC's list of objects neither the local cache nor the remote has.
MISSING = re.compile(r"md5: ([0-9a-f]{32}(?:\.dir)?)")
#: DVC's words when it cannot open the remote.
CONNECT = re.compile(r"failed to connect to \S+ \(.*?\) - (.*)")
LOGIN = re.compile(r"permission denied|authentication|auth fail", re.I)
#: Names in one message, at most.
SHOWN = 8


@dataclass(frozen=True)
class Stored:
    """One object the workspace needs: the output (or file of a directory output) it holds, its
    md5 (`.dir`: a directory's listing) and where the local cache keeps it."""

    path: str
    oid: str
    cache: Path


def _repo(root: Path | None = None) -> Any:
    """The DVC repository at `root`, or the one the working directory is in."""
    from dvc.repo import Repo

    return Repo(str(root) if root else None)


def stored_objects(repo: Any) -> Iterator[Stored]:
    """Every cached object the workspace's dvc.lock and .dvc files name; a directory's files
    only where its listing is in the cache undamaged."""
    for out in repo.index.outs:
        if not (out.use_cache and out.hash_info and out.hash_info.value) or out.hash_name != "md5":
            continue  # not cached, never run, or a DVC 2 hash that is not the file's md5
        label = Path(os.path.relpath(out.fs_path, repo.root_dir)).as_posix()
        oid = out.hash_info.value
        cache = Path(out.cache.oid_to_path(oid))
        yield Stored(label, oid, cache)
        if oid.endswith(".dir") and cache.is_file() and file_md5(cache) == oid[:-4]:
            for entry in json.loads(cache.read_text()):
                yield Stored(f"{label}/{entry['relpath']}", entry["md5"],
                             Path(out.cache.oid_to_path(entry["md5"])))


def verify(repo: Any) -> list[str]:
    """Re-hash every object of `stored_objects` the local cache holds; remove each damaged one
    (and a workspace file with the same bytes, copied from it) and return a line naming each."""
    damaged = []
    for item in stored_objects(repo):
        if not item.cache.is_file():
            continue
        actual = file_md5(item.cache)
        if actual == item.oid.removesuffix(".dir"):
            continue
        item.cache.unlink()
        workspace = Path(repo.root_dir) / item.path
        also = ""
        if workspace.is_file() and file_md5(workspace) == actual:
            workspace.unlink()
            also = " and the workspace file copied from it"
        where = os.path.relpath(item.cache, repo.root_dir)
        damaged.append(f"{item.path}: its object in the local cache is damaged ({where} hashes "
                       f"to {actual}); removed it{also}, so that DVC cannot use it")
    return damaged


def _names(paths: Sequence[str]) -> str:
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return ", ".join(paths[:SHOWN]) + more


def explain(stderr: str, remote: str, settings: dict[str, Any], unfetched: Sequence[Stored],
            root: Path) -> str:
    """One line saying why `dvc pull` failed, from its stderr, the remote's `settings` (DVC's
    config section) and the objects still missing from the local cache after it; otherwise
    DVC's own error in one line."""
    url = settings.get("url", "")
    where = f"the remote '{remote}' ({url})" if remote else "the default remote"
    connect = CONNECT.search(stderr)
    if connect:
        reason = connect.group(1).strip(" :")
        halves = reason.split(": ")
        reason = halves[0] if len(halves) == 2 and halves[0] == halves[1] else reason
        if LOGIN.search(reason):
            return (f"{where} refused the login ({reason}); check the user and key: "
                    f"dvc remote modify --local {remote} keyfile PATH (and user NAME)")
        if not reason or re.search(r"time ?out|timed out", reason, re.I):
            within = f" {settings['timeout']} s" if settings.get("timeout") else " its timeout"
            return (f"{where} did not answer within{within}; check that its server is up and "
                    "reachable from here")
        return (f"{where} is unreachable ({reason}); check that its server is up and the "
                "address in `dvc remote list`")
    folder = (root / ".dvc" / url) if url and "://" not in url else None
    if folder is not None and not folder.is_dir():
        return (f"{where} is not there (no folder {folder.resolve()}); is the shared folder "
                "mounted?")
    absent = set(MISSING.findall(stderr))
    missing = [item.path for item in unfetched if item.oid in absent]
    rejected = ([item for item in unfetched if item.oid not in absent]
                if settings.get("verify") else [])
    said = []
    if missing:
        said.append(f"{len(missing)} object(s) are not on {where}: {_names(missing)}; run "
                    "`dvc push` on the machine that made them")
    if rejected:
        objects = _names([f"files/md5/{item.oid[:2]}/{item.oid[2:]}" for item in rejected])
        said.append(f"{where} holds damaged copies of {_names([i.path for i in rejected])} "
                    f"(their bytes do not match their hashes); delete {objects} there and run "
                    "`dvc push` on the machine that made them")
    return "; ".join(said) if said else dvc_error(stderr)


def dvc_error(stderr: str) -> str:
    """DVC's last error, its lines joined into one (without its help link)."""
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("ERROR:")]
    if not starts:
        return "dvc pull failed"
    said = []
    for line in lines[starts[-1]:]:
        if not line.strip() or line.startswith("<http"):
            break
        said.append(line.strip())
    return " ".join(said).removeprefix("ERROR: ")


def pull(remote: str | None = None, root: Path | None = None) -> int:
    """`verify`, then `dvc pull` (its output as it comes); a failure is one line on stderr."""
    with _repo(root) as repo:
        root = Path(repo.root_dir)
        for line in verify(repo):
            print(f"team pull: {line}", file=sys.stderr)
        name = remote or repo.config["core"].get("remote") or ""
        settings = repo.config["remote"].get(name, {})
    cmd = [sys.executable, "-m", "dvc", "pull", *(["-r", remote] if remote else [])]
    proc = subprocess.run(cmd, cwd=root, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode == 0:
        sys.stderr.write(proc.stderr)
        return 0
    with _repo(root) as repo:
        unfetched = [item for item in stored_objects(repo) if not item.cache.is_file()]
    why = explain(proc.stderr, name, settings, unfetched, root)
    print(f"team pull: {why}", file=sys.stderr)
    return 1


def server(db: str, artifacts: str, host: str, port: int, workers: int | None,
           extra: Sequence[str] = ()) -> int:
    """Start `mlflow server` on the database `db` with proxied artifacts in `artifacts` (and
    `extra` arguments, e.g. `--allowed-hosts`), once the database answers; returns 1 with one
    line naming it when it does not."""
    import sqlalchemy

    url = sqlalchemy.engine.make_url(db)
    shown = url.render_as_string(hide_password=True)
    connect_args = {"connect_timeout": 10} if url.get_backend_name() == "postgresql" else {}
    try:
        with sqlalchemy.create_engine(url, connect_args=connect_args).connect():
            pass
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        first = " ".join(str(getattr(exc, "orig", None) or exc).split())
        first = first.split(" (Background on this error")[0][:300]
        print(f"team server: the database {shown} does not answer ({first}); start it or fix "
              "--db", file=sys.stderr)
        return 1
    if "://" not in artifacts:
        artifacts = str(Path(artifacts).resolve())
    # MLflow's job runner serves GenAI features (online scoring, trace archival) this project
    # does not use: six worker processes fewer
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", db,
           "--serve-artifacts", "--artifacts-destination", artifacts,
           "--host", host, "--port", str(port), *(["--workers", str(workers)] if workers else []),
           *extra]
    os.execv(sys.executable, cmd)
    return 0  # not reached: exec replaced this process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("verify", help="re-hash this workspace's objects in the local cache")
    pulling = commands.add_parser("pull", help="verify, then dvc pull; a failure in one line")
    pulling.add_argument("-r", "--remote", help="the remote to pull from (default: DVC's)")
    serving = commands.add_parser("server", help="mlflow server on a database (other "
                                  "arguments go to `mlflow server`)")
    serving.add_argument("--db", required=True,
                         help="SQLAlchemy URI, e.g. postgresql://user@host/db")
    serving.add_argument("--artifacts", required=True, help="where the server keeps artifacts")
    serving.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serving.add_argument("--port", type=int, default=5000)
    serving.add_argument("--workers", type=int, help="server processes (MLflow's default: 4)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "server":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "verify":
        with _repo() as repo:
            damaged = verify(repo)
        for line in damaged:
            print(f"team verify: {line}", file=sys.stderr)
        sys.exit(1 if damaged else 0)
    if args.command == "pull":
        sys.exit(pull(args.remote))
    sys.exit(server(args.db, args.artifacts, args.host, args.port, args.workers, extra))


if __name__ == "__main__":
    main()
