"""The 2-D toy sets of the invertible-boundary reference: moons, circles and three blobs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from xai.data.prepared import Dataset, Split
from xai.settings import SEED_MAX, bounded


@dataclass(frozen=True)
class ToyConfig:
    """The 2-D toy set; `noise: null` takes the reference value of the chosen set."""

    dataset: Literal["moons", "circles", "blobs"] = 'moons'
    n_samples: int = bounded(1000, ge=10)
    noise: float | None = bounded(None, ge=0)
    seed: int = bounded(0, ge=0, le=SEED_MAX)
    test_fraction: float = bounded(0.4, gt=0, lt=1)
    split_seed: int = bounded(42, ge=0, le=SEED_MAX)
    circles_factor: float = bounded(0.5, gt=0, lt=1)

#: The reference's noise (for blobs: the cluster standard deviation), used when `toy.noise` is null.
REFERENCE_NOISE = {"moons": 0.2, "circles": 0.2, "blobs": 0.4}
BLOB_CENTERS = ((1.0, 1.0), (-1.0, -1.0), (1.0, -1.0))


def make_toy(cfg: ToyConfig) -> Dataset:
    """Sample the toy set and split it as the reference does (sklearn, fixed random states)."""
    # imported here: every stage reads ToyConfig with params.yaml, and sklearn takes seconds
    from sklearn.datasets import make_blobs, make_circles, make_moons
    from sklearn.model_selection import train_test_split

    noise = REFERENCE_NOISE[cfg.dataset] if cfg.noise is None else cfg.noise
    if cfg.dataset == "moons":
        x, y = make_moons(n_samples=cfg.n_samples, noise=noise, random_state=cfg.seed)
    elif cfg.dataset == "circles":
        x, y = make_circles(n_samples=cfg.n_samples, noise=noise, factor=cfg.circles_factor,
                            random_state=cfg.seed)
    else:
        x, y = make_blobs(n_samples=cfg.n_samples, centers=BLOB_CENTERS, cluster_std=noise,
                          random_state=cfg.seed)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=cfg.test_fraction,
                                              random_state=cfg.split_seed)
    classes = tuple(str(c) for c in range(int(y.max()) + 1))
    empty = Split(torch.empty(0, 2), torch.empty(0, dtype=torch.int64))
    return Dataset(cfg.dataset, classes, _split(x_tr, y_tr), empty, _split(x_te, y_te))


def _split(x: object, y: object) -> Split:
    return Split(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64))
