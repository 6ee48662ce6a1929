"""The team's DVC remote: a tiny pipeline pushed to an SSH remote on a real OpenSSH server on
loopback (and to a shared folder), pulled into fresh clones on a machine without the raw data;
an interrupted pull, a damaged object, and each failure in one line (`xai.pipeline.team`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import image_tree, write_tar
from tests.servers import Sshd, free_port
from tests.test_blackbox import TINY
from tests.test_pipeline import DVC, _env, new_project, run
from xai.io import file_md5

#: the tiny pipeline: prepared data, a trained model, metrics and plots
STAGES = ("raw_data", "prepare", "prepare_toy", "train_blackbox")


def remote_setup(url: str) -> list[list[str]]:
    """The commands docs/team.md gives for the team's remote (committed in .dvc/config)."""
    return [[DVC, "remote", "add", "-d", "team", url],
            [DVC, "remote", "modify", "team", "verify", "true"],
            [DVC, "remote", "modify", "team", "timeout", "30"]]


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)


@dataclass(frozen=True)
class Origin:
    """The machine that ran the pipeline: its repository, the remote's folder, the SSH server."""

    repo: Path
    store: Path
    shared: Path
    sshd: Sshd


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def origin(tmp_path_factory, sshd) -> Origin:
    """A project whose tiny pipeline ran, committed and pushed to the SSH remote `team` and to
    the shared folder `shared`; then its raw data is deleted (the machines that clone it have
    none)."""
    base = tmp_path_factory.mktemp("team")
    (base / "raw").mkdir()
    archive = write_tar(base / "raw" / "tiny.tar.gz", image_tree())
    repo = new_project(base / "origin", archive, TINY, STAGES)
    run([DVC, "repro"], repo)
    store, shared = base / "store", base / "shared"
    for cmd in remote_setup(sshd.url(store)):
        run(cmd, repo)
    run([DVC, "remote", "modify", "--local", "team", "keyfile", str(sshd.key)], repo)
    run([DVC, "remote", "add", "shared", str(shared)], repo)
    commit(repo, "the tiny pipeline, run")
    run([DVC, "push"], repo)
    run([DVC, "push", "-r", "shared"], repo)
    archive.unlink()
    return Origin(repo, store, shared, sshd)


def clone(source: Path, dest: Path, key: Path) -> Path:
    """A fresh `git clone`, with the remote's key set as a newcomer sets theirs."""
    run(["git", "clone", "-q", str(source), str(dest)], dest.parent)
    run([DVC, "remote", "modify", "--local", "team", "keyfile", str(key)], dest)
    return dest


def team(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xai.pipeline.team", *args], cwd=repo,
                          env=_env(), capture_output=True, text=True, timeout=300)


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a failed command says on stderr (asserting it is one, with no traceback)."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, \
        proc.stderr
    return lines[0]


def outputs(repo: Path) -> dict[str, str]:
    """md5 of every output (cached, or in git: metrics, plots), by path, as dvc.lock has it."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in lock.values() for out in stage.get("outs", [])}


def changed(repo: Path) -> set[str]:
    """Stages `dvc status` reports (`raw_data` always is: it fingerprints the raw data)."""
    out = run([DVC, "status"], repo)
    return {line[:-1] for line in out.splitlines() if line.endswith(":") and
            not line.startswith((" ", "\t"))} - {"raw_data"}


def cache_object(repo: Path, md5: str) -> Path:
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def damage(path: Path) -> None:
    """Flip bytes in the middle of a file, keeping its size and times (as bit rot would)."""
    stat = path.stat()
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))
    path.chmod(stat.st_mode)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_fresh_clone_pulls_every_output_and_trains_nothing(origin, tmp_path):
    repo = clone(origin.repo, tmp_path / "newcomer", origin.sshd.key)
    proc = team(repo, "pull")
    assert proc.returncode == 0, proc.stderr
    for path, md5 in outputs(origin.repo).items():
        assert file_md5(repo / path) == md5, path
    assert changed(repo) == set()
    out = run([DVC, "repro"], repo)
    assert set(re.findall(r"Running stage '(\w+)'", out)) == {"raw_data"}, out
    assert "none of the raw files" in out  # raw_data kept the record: nothing else ran
    shown = [json.loads(run([DVC, "metrics", "show", "--json"], r)) for r in (origin.repo, repo)]
    assert shown[0] == shown[1] and "metrics/blackbox.json" in json.dumps(shown[1])


def test_a_shared_folder_remote_serves_a_clone_the_same(origin, tmp_path):
    repo = clone(origin.repo, tmp_path / "newcomer", origin.sshd.key)
    proc = team(repo, "pull", "-r", "shared")
    assert proc.returncode == 0, proc.stderr
    for path, md5 in outputs(origin.repo).items():
        assert file_md5(repo / path) == md5, path
    assert changed(repo) == set()


def test_an_interrupted_pull_completes_when_run_again(origin, tmp_path):
    work = clone(origin.repo, tmp_path / "work", origin.sshd.key)
    big = work / "data" / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(48 << 20))  # long enough to cut in two
    run([DVC, "add", "-q", "data/big.bin"], work)
    commit(work, "a big file")
    run([DVC, "push", "data/big.bin.dvc"], work)
    repo = clone(work, tmp_path / "newcomer", origin.sshd.key)
    cache = repo / ".dvc" / "cache"
    pulling = subprocess.Popen([DVC, "pull"], cwd=repo, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and pulling.poll() is None:
        with suppress(FileNotFoundError):  # a temporary file renamed under our feet
            if any(p.stat().st_size > 1 << 20 for p in cache.rglob("*.tmp")):
                break  # the big object is arriving (DVC writes a temporary file, then renames)
        time.sleep(0.01)
    os.killpg(pulling.pid, signal.SIGKILL)
    assert pulling.wait(timeout=30) == -signal.SIGKILL, "the pull ended before it was killed"
    assert not cache_object(repo, file_md5(big)).exists()

    proc = team(repo, "pull")
    assert proc.returncode == 0, proc.stderr
    assert file_md5(repo / "data" / "big.bin") == file_md5(big)
    for path, md5 in outputs(origin.repo).items():
        assert file_md5(repo / path) == md5, path
    assert changed(repo) == set()


def test_a_damaged_object_in_the_cache_is_named_and_not_used(origin, tmp_path):
    repo = clone(origin.repo, tmp_path / "newcomer", origin.sshd.key)
    assert team(repo, "pull").returncode == 0
    assert team(repo, "verify").returncode == 0  # a sound cache: nothing to name
    model = repo / "models" / "blackbox.pt"
    good = model.read_bytes()
    damage(cache_object(repo, outputs(repo)["models/blackbox.pt"]))
    model.unlink()
    run([DVC, "checkout"], repo)
    assert model.read_bytes() != good, ("DVC no longer copies a damaged object whose size and "
                                        "time are unchanged: revise docs/team.md")

    proc = team(repo, "verify")
    line = one_line(proc)
    assert line.startswith("team verify: models/blackbox.pt: its object in the local cache is "
                           "damaged"), line
    assert "and the workspace file copied from it" in line and not model.exists()
    proc = team(repo, "pull")
    assert proc.returncode == 0, proc.stderr
    assert model.read_bytes() == good
    assert changed(repo) == set()


def test_a_remote_that_cannot_be_reached_or_logged_into_says_so_in_one_line(origin, tmp_path):
    """Nothing listening, a server that never answers, a wrong key, a shared folder that is not
    mounted, a remote holding a damaged copy: one line each, on a fresh clone."""
    repo = clone(origin.repo, tmp_path / "newcomer", origin.sshd.key)
    local = repo / ".dvc" / "config.local"
    settings = local.read_text()

    def pull_with(*changes: tuple[str, ...], remote: str = "team") -> str:
        local.write_text(settings)
        for change in changes:
            run([DVC, "remote", "modify", "--local", remote, *change], repo)
        return one_line(team(repo, "pull", "-r", remote))

    port = free_port()  # nothing listens there
    line = pull_with(("url", f"ssh://127.0.0.1:{port}{origin.store}"))
    assert line.startswith(f"team pull: the remote 'team' (ssh://127.0.0.1:{port}") and \
        "is unreachable (" in line and "Connect call failed" in line, line

    with socket.socket() as silent:  # accepts connections (the kernel does) and says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        start = time.monotonic()
        line = pull_with(("url", f"ssh://127.0.0.1:{silent.getsockname()[1]}{origin.store}"),
                         ("timeout", "3"))
    assert "did not answer within 3 s" in line and time.monotonic() - start < 60, line

    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    line = pull_with(("keyfile", str(wrong)))
    assert "the remote 'team'" in line and "refused the login (Permission denied" in line and \
        "keyfile" in line, line

    line = pull_with(("url", str(tmp_path / "unmounted")), remote="shared")
    assert line.startswith("team pull: the remote 'shared'") and "is not there" in line and \
        "mounted?" in line, line

    store = tmp_path / "store"  # a copy of the remote, one of whose objects went bad there
    shutil.copytree(origin.store, store)
    md5 = outputs(origin.repo)["models/blackbox.pt"]
    damage(store / "files" / "md5" / md5[:2] / md5[2:])
    line = pull_with(("url", origin.sshd.url(store)))
    assert "holds damaged copies of models/blackbox.pt" in line and "dvc push" in line, line
    assert not (repo / "models" / "blackbox.pt").exists()
    run([DVC, "remote", "modify", "--local", "team", "verify", "false"], repo)
    assert team(repo, "pull").returncode == 0  # without `verify`, DVC takes the damaged copy
    assert file_md5(repo / "models" / "blackbox.pt") != md5 and changed(repo) == set(), \
        "DVC now re-hashes what it fetches without `verify`: revise docs/team.md"


def test_objects_nobody_pushed_are_named_with_the_fix(origin, tmp_path):
    """A colleague re-runs a stage and commits without `dvc push`: a clone of that commit finds
    the new output missing on the remote."""
    colleague = clone(origin.repo, tmp_path / "colleague", origin.sshd.key)
    params = colleague / "params.yaml"
    params.write_text(params.read_text().replace("n_samples: 1000", "n_samples: 500"))
    out = run([DVC, "repro", "prepare_toy"], colleague)
    assert "Running stage 'prepare_toy'" in out
    commit(colleague, "a smaller toy set, not pushed")
    repo = clone(colleague, tmp_path / "newcomer", origin.sshd.key)
    line = one_line(team(repo, "pull"))
    assert line == ("team pull: 1 object(s) are not on the remote 'team' "
                    f"({origin.sshd.url(origin.store)}): data/prepared/toy.pt; run `dvc push` on "
                    "the machine that made them"), line
