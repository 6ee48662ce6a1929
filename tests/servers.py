"""Real servers for the team tests, on loopback at free ports, stopped after: OpenSSH's `sshd`,
PostgreSQL and `mlflow server` on it (through `python -m xai.pipeline.team server`).

Each runs as the current user; as root (CI), `sshd` needs its privilege-separation folder
/run/sshd (which the ssh service would create) and PostgreSQL runs as the `postgres` user, in a
folder of its own. Missing binaries skip a test with the Debian packages to install, but fail it
where XAI_REQUIRE_SERVERS is set (`.ci/run` sets it, after installing them).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ROOT

ROOT_USER = os.geteuid() == 0


def require(path: str | None, what: str, package: str) -> str:
    """`path` of a server binary; a skip (a failure under XAI_REQUIRE_SERVERS) when it is None."""
    if path:
        return path
    message = f"{what} not found: apt-get install -y {package}"
    if os.environ.get("XAI_REQUIRE_SERVERS"):
        pytest.fail(f"{message} (XAI_REQUIRE_SERVERS is set: .ci/run installs it)")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(ready: Callable[[], bool], what: str, timeout_s: float = 180,
             proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `ready()` until it is true; fail naming `what` (and its log) when it never is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    said = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
    raise AssertionError(f"{what} did not start:\n{said}")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _sshd_binary() -> str | None:
    return shutil.which("sshd") or next(
        (str(p) for p in (Path("/usr/sbin/sshd"), Path("/usr/local/sbin/sshd")) if p.is_file()),
        None)


class Sshd:
    """OpenSSH's sshd on 127.0.0.1 with its own host key, letting in the current user with the
    generated client key `key` (`authorized_keys` beside it)."""

    def __init__(self, folder: Path) -> None:
        binary = require(_sshd_binary(), "OpenSSH's sshd", "openssh-server")
        keygen = require(shutil.which("ssh-keygen"), "ssh-keygen", "openssh-client")
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port, self.user = folder, free_port(), getpass.getuser()
        self.key = folder / "client_key"
        for key in (folder / "host_key", self.key):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
        config = folder / "sshd_config"
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {folder / 'host_key'}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", ""]))
        if ROOT_USER:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = folder / "sshd.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stdout=log,
                                         stderr=subprocess.STDOUT)
        wait_for(lambda: _listening(self.port), "sshd", 30, self.proc, self.log)

    def url(self, path: Path) -> str:
        return f"ssh://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries (the newest version), or of pg_ctl on
    PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    on_path = shutil.which("pg_ctl")
    return found[-1].parent if found else Path(on_path).parent if on_path else None


class Postgres:
    """A PostgreSQL server on 127.0.0.1 with a password-protected user `mlflow` owning the
    database `mlflow`; the password is in `pgpass` (libpq's password file), not in the URI."""

    def __init__(self) -> None:
        binary = _postgres_bin()
        self.bin = Path(require(str(binary) if binary else None, "PostgreSQL", "postgresql"))
        # its own folder: postgres must be able to reach it, and pytest's folders are private
        self.folder = Path(tempfile.mkdtemp(prefix="xai-postgres-"))
        self.port, self.data = free_port(), self.folder / "data"
        password = self.folder / "password"
        password.write_text("team-secret\n")
        self.pgpass = self.folder / "pgpass"
        self.pgpass.write_text(f"127.0.0.1:{self.port}:*:mlflow:team-secret\n")
        self.pgpass.chmod(0o600)
        if ROOT_USER:
            shutil.chown(self.folder, "postgres")
            shutil.chown(password, "postgres")
        self._as_owner([self.bin / "initdb", "-D", str(self.data), "-U", "mlflow",
                        f"--pwfile={password}", "-A", "scram-sha-256", "-E", "UTF8",
                        "--no-sync", "--no-instructions"])
        self.start()
        subprocess.run([self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                        "mlflow", "mlflow"], env={**os.environ, "PGPASSFILE": str(self.pgpass)},
                       check=True, capture_output=True)
        self.uri = f"postgresql://mlflow@127.0.0.1:{self.port}/mlflow"

    def _as_owner(self, cmd: list[str | Path]) -> None:
        cmd = [str(c) for c in cmd]
        if ROOT_USER:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.folder)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} "
                   "-c fsync=off")
        self._as_owner([self.bin / "pg_ctl", "-D", self.data, "-l", self.folder / "log", "-w",
                        "-o", options, "start"])

    def stop(self) -> None:
        """Stop at once (no shutdown checkpoint), as a crash or a pulled cable would."""
        self._as_owner([self.bin / "pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop"])

    def remove(self) -> None:
        with contextlib.suppress(AssertionError):
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class MlflowServer:
    """`python -m xai.pipeline.team server` (mlflow server on `db`, artifacts proxied into
    `artifacts`) on a free loopback port, in its own process group."""

    def __init__(self, db: Postgres, artifacts: Path, log: Path) -> None:
        port = free_port()
        self.uri = f"http://127.0.0.1:{port}"
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "xai.pipeline.team", "server", "--db", db.uri,
                 "--artifacts", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PGPASSFILE": str(db.pgpass)}, start_new_session=True)
        wait_for(self._healthy, "mlflow server", 240, self.proc, log)
        # a request that reads the store: the server process opens its database connection on
        # the first one (a database down before that keeps it in MLflow's own reconnect loop for
        # about 100 s instead of answering 503)
        urllib.request.urlopen(f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1",
                               timeout=60).close()

    def _healthy(self) -> bool:
        try:
            urllib.request.urlopen(self.uri + "/health", timeout=2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
