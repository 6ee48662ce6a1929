"""Atomic output and safe loading."""

from __future__ import annotations

import pytest
import torch

from xai.errors import CheckpointError
from xai.io import atomic_path, load_torch, save_json, save_torch


def test_failed_write_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "model.pt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half a model")
            raise RuntimeError("killed mid-write")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_outputs_get_ordinary_permissions(tmp_path):
    import os

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
