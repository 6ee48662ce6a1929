"""The 2-D toy sets of the invertible-boundary reference: moons, circles and three blobs."""

from __future__ import annotations

import torch
from sklearn.datasets import make_blobs, make_circles, make_moons
from sklearn.model_selection import train_test_split

from xai.pipeline.config import ToyConfig
from xai.data.prepared import Dataset, Split

#: The reference's noise (for blobs: the cluster standard deviation), used when `toy.noise` is null.
REFERENCE_NOISE = {"moons": 0.2, "circles": 0.2, "blobs": 0.4}
BLOB_CENTERS = ((1.0, 1.0), (-1.0, -1.0), (1.0, -1.0))


def make_toy(cfg: ToyConfig) -> Dataset:
    """Sample the toy set and split it as the reference does (sklearn, fixed random states)."""
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
