"""Atomic output and safe loading."""

from __future__ import annotations

import json
import os

import pytest
import torch

from xai.errors import CheckpointError
from xai.io import (
    JOURNAL_SUFFIX,
    atomic_path,
    load_torch,
    recover,
    save_json,
    save_torch,
    transaction,
    write_bytes,
)


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "model.pt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a model")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_outputs_get_ordinary_permissions(tmp_path):
    path = tmp_path / "m.json"
    save_json({}, path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_is_all_or_nothing(tmp_path):
    target = tmp_path / "metrics.json"
    save_json({"a": 1}, target)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("{broken")
            raise KeyboardInterrupt
    assert target.read_text().strip() == '{\n  "a": 1\n}'


def test_torch_round_trip_and_kind_check(tmp_path):
    path = tmp_path / "m.pt"
    save_torch({"kind": "xai.model", "w": torch.ones(3)}, path)
    assert torch.equal(load_torch(path, kind="xai.model", required=["w"])["w"], torch.ones(3))
    with pytest.raises(CheckpointError, match="expected a 'xai.dataset'"):
        load_torch(path, kind="xai.dataset")
    with pytest.raises(CheckpointError, match="missing b"):
        load_torch(path, kind="xai.model", required=["w", "b"])


def test_truncated_and_foreign_files_fail_cleanly(tmp_path):
    path = tmp_path / "m.pt"
    save_torch({"kind": "xai.model", "w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_torch(path, kind="xai.model")
    path.write_bytes(b"hello")
    with pytest.raises(CheckpointError):
        load_torch(path, kind="xai.model")
    with pytest.raises(CheckpointError, match="not found"):
        load_torch(tmp_path / "absent.pt", kind="xai.model")


def test_pickled_code_is_refused(tmp_path):
    """weights_only loading refuses arbitrary objects instead of executing them."""
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"kind": "xai.model", "x": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_torch(path, kind="xai.model")


def test_a_transaction_commits_all_outputs_together(tmp_path):
    model, metrics = tmp_path / "models" / "m.pt", tmp_path / "metrics" / "m.json"
    save_json({"old": 1}, metrics)
    with transaction():
        save_torch({"w": torch.ones(2)}, model)
        save_json({"new": 1}, metrics)
        assert not model.exists() and json.loads(metrics.read_text()) == {"old": 1}
    assert json.loads(metrics.read_text()) == {"new": 1}
    assert torch.equal(torch.load(model, weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["m.json", "m.pt"]


def test_an_interrupted_transaction_leaves_the_previous_outputs(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "sub" / "b.json"
    save_json({"v": 1}, a)
    save_json({"v": 1}, b)
    with pytest.raises(KeyboardInterrupt):
        with transaction():
            save_json({"v": 2}, a)  # written completely, then the stage is interrupted
            raise KeyboardInterrupt
    assert json.loads(a.read_text()) == json.loads(b.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.json", "b.json"]


def test_early_commit_and_unstaged_writes(tmp_path):
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "out.json"
    with transaction() as txn:
        save_torch({"step": 3}, ckpt, staged=False)  # a resume checkpoint: written at once
        assert ckpt.exists()
        save_json({"x": 1}, out)
        txn.commit()
        assert out.exists()  # readable (e.g. to log it) inside the block after the commit


COMMIT_LOOP = """
import signal
import sys
from pathlib import Path
from xai.io import save_json, transaction
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started
                                                          # from a shell that ignores SIGINT
folder = Path(sys.argv[1])
generation = 0
print("ready", flush=True)
while True:
    generation += 1
    with transaction():
        for i in range(200):
            save_json({"generation": generation}, folder / f"{i}.json")
"""


@pytest.mark.parametrize("delay", [0.3, 0.6, 0.9])
def test_sigint_at_any_moment_leaves_one_generation_of_outputs(tmp_path, delay):
    """Many commits of 200 files, interrupted at a random moment (often mid-rename): every file
    is from the same commit (a held-back SIGINT takes effect after the last rename)."""
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    proc = subprocess.Popen([sys.executable, "-c", COMMIT_LOOP, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    generations = {json.loads(f.read_text())["generation"] for f in tmp_path.glob("*.json")}
    assert len(generations) <= 1, generations
    assert not list(tmp_path.glob(".*"))  # no staged file or journal left behind


def test_a_commit_cut_short_is_refused_on_load_and_completed_by_the_next(tmp_path):
    """SIGKILL inside the rename phase: the journal lists the complete staged files."""
    model, probs = tmp_path / "model.pt", tmp_path / "probs.pt"
    save_torch({"kind": "xai.model", "v": 1}, model)
    save_torch({"kind": "xai.probs", "v": 1}, probs)
    staged = {p: p.with_name(f".{p.name}.x.tmp") for p in (model, probs)}
    for p, tmp in staged.items():
        save_torch({"kind": "xai.model" if p == model else "xai.probs", "v": 2}, tmp)
    journal = tmp_path / f".model.pt{JOURNAL_SUFFIX}"
    journal.write_text(json.dumps([[str(t), str(p)] for p, t in staged.items()]))
    os.replace(staged[model], model)  # killed here: model is new, probs still old
    with pytest.raises(CheckpointError, match="cut short"):
        load_torch(probs, kind="xai.probs")
    assert recover(tmp_path) == [model, probs]
    assert load_torch(model, kind="xai.model")["v"] == load_torch(probs, kind="xai.probs")["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "probs.pt"]


def test_a_temporary_file_left_by_a_killed_writer_goes_with_the_next_write(tmp_path):
    target = tmp_path / "fig.png"
    stale = tmp_path / ".fig.png.ab12cd_3.tmp"  # what mkstemp left when the writer was killed
    other = tmp_path / ".fig.png.x.ab12cd_3.tmp"  # a temporary file of another target
    stale.write_bytes(b"half")
    other.write_bytes(b"half")
    with transaction():
        write_bytes(target, b"new")
        write_bytes(tmp_path / "table.md", b"new")
    assert target.read_bytes() == b"new" and not stale.exists() and other.exists()
