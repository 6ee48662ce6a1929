"""Prepared data sets: one compact file per set, loaded in one call and kept in memory.

A prepared file holds uint8 images (N x C x H x W) or float 2-D points, int64 labels, class names
and a seeded train/validation split. Stages move the whole set to the device once and batch by
indexing, so no DataLoader or per-sample transform sits in the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from xai.errors import DataError
from xai.io import load_torch, save_torch

KIND = "xai.dataset"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Inputs of one split and what a model should predict for them: class labels (N), or class
    probabilities (N x K) to fit, as VIBI fits the black box's."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class Dataset:
    """A prepared data set: images (uint8, N x C x H x W) or toy points (float, N x 2)."""

    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. (1, 28, 28) or (2,)."""
        return tuple(self.train.x.shape[1:])

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.name, self.classes, *(getattr(self, s).to(device) for s in SPLITS))


def train_val_split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int
                    ) -> tuple[Split, Split]:
    """Split off a seeded random validation share; both parts keep the original order."""
    n = len(y)
    n_val = round(n * val_fraction)
    if n_val < 1 or n_val >= n:
        raise DataError(
            f"{n} training inputs cannot be split with `val_fraction` = {val_fraction}: "
            "both train and validation must be non-empty", fields=("val_fraction",))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])


def save_dataset(ds: Dataset, path: str | Path) -> None:
    """Write a prepared data set atomically; equal data gives a byte-identical file."""
    state: dict[str, object] = {"kind": KIND, "version": 1, "name": ds.name,
                                "classes": list(ds.classes)}
    for split in SPLITS:
        part = getattr(ds, split)
        state[f"{split}_x"] = part.x.contiguous()
        state[f"{split}_y"] = part.y.to(torch.int64).contiguous()
    save_torch(state, path)


def load_dataset(path: str | Path, device: torch.device | str = "cpu") -> Dataset:
    """Load a prepared data set (written by the prepare stage) onto `device`."""
    keys = ["name", "classes"] + [f"{s}_{v}" for s in SPLITS for v in "xy"]
    state = load_torch(path, kind=KIND, required=keys)
    splits = [Split(state[f"{s}_x"], state[f"{s}_y"]).to(device) for s in SPLITS]
    return Dataset(str(state["name"]), tuple(state["classes"]), *splits)
