"""Shared fixtures: the project's params.yaml with test overrides, tiny synthetic data on disk."""

from __future__ import annotations

import io
import struct
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from xai.data.prepared import Dataset, Split, save_dataset
from xai.pipeline.config import set_dotted

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `tests.conftest`, `tools.docs` under a plain `pytest` too
    sys.path.insert(0, str(ROOT))


def experiment(name: str) -> ModuleType:
    """The script `experiments/<name>.py`, imported as a module (experiments are not a package)."""
    from tools.docs import experiment_module
    return experiment_module(ROOT, name)


def write_params(path: Path, overrides: dict[str, Any] | None = None) -> Path:
    """Copy the project's params.yaml to `path` with dotted-key overrides; tracking off by default."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    set_dotted(params, "tracking.enabled", False)
    for key, value in (overrides or {}).items():
        set_dotted(params, key, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch on one thread for the test: small ops gain nothing from a second, and on a machine
    shared with other jobs two spinning threads can make them many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def params(tmp_path: Path) -> Callable[..., Path]:
    """`params(**{"vibi.k": 3})` -> path of a params file with those overrides."""
    return lambda overrides=None, name="params.yaml": write_params(tmp_path / name, overrides)


def write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images/labels in the MNIST idx format torchvision reads."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(
        struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())


@pytest.fixture
def idx_root(tmp_path: Path) -> Path:
    """A data root holding tiny MNIST and FashionMNIST sets in torchvision's raw layout."""
    rng = np.random.default_rng(0)
    root = tmp_path / "raw"
    for name in ("MNIST", "FashionMNIST"):
        for prefix, n in (("train", 50), ("t10k", 20)):
            write_idx(root / name / "raw", prefix, rng.integers(0, 256, (n, 28, 28)),
                      np.arange(n) % 10)
    return root


def image_tree(colour: bool = True, size: int = 8, per_class: int = 6,
               classes: tuple[str, ...] = ("cat", "dog", "emu")) -> dict[str, bytes]:
    """PNG files of a tiny class-per-folder tree: {"tree/train/cat/0.png": bytes, ...}."""
    rng = np.random.default_rng(1)
    files = {}
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for c, label in enumerate(classes):
            for i in range(n):
                shape = (size, size, 3) if colour else (size, size)
                pixels = rng.integers(0, 256, shape).astype(np.uint8)
                pixels[0, 0] = c  # makes each image's class visible in its pixels
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="PNG")
                files[f"tree/{split}/{label}/{i:03d}.png"] = buffer.getvalue()
    return files


def write_tar(path: Path, files: dict[str, bytes], order: list[str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in order or sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tar.addfile(info, io.BytesIO(files[name]))
    return path


@pytest.fixture
def folder_archive(tmp_path: Path) -> Path:
    """A .tar.gz of a tiny colour class-per-folder tree (like cifar10-jpeg.tar.gz)."""
    return write_tar(tmp_path / "tiny.tar.gz", image_tree())


def separable(n: int, channels: int = 1, side: int = 8, seed: int = 0) -> Split:
    """Class 0: bright left half; class 1: bright right half (plus noise)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randint(0, 60, (n, channels, side, side), generator=g)
    half = torch.arange(side) < side // 2
    mask = torch.where(y[:, None].bool(), ~half[None, :], half[None, :])  # n x side
    x = x + 180 * mask[:, None, None, :]
    return Split(x.to(torch.uint8), y)


@pytest.fixture
def tiny_images(tmp_path: Path) -> Path:
    """A prepared two-class 8x8 image set (left vs right half bright)."""
    path = tmp_path / "images.pt"
    save_dataset(Dataset("tiny", ("left", "right"), separable(256), separable(32, seed=1),
                         separable(32, seed=2)), path)
    return path
