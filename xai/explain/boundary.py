"""Decision boundaries of an invertible classifier, and explanations by projection onto them.

For `f(x) = W·T(x) + b` the boundary between classes `c` and `k` is the hyperplane
`w·z + b' = 0` in feature space (`w = W_c - W_k`, `b' = b_c - b_k`, `W` the head's weight over the
whole feature tensor) and its image under `T^-1` in input space. A point's explanation is its
difference to its projection onto that boundary:

    z_p = z - ((w·z + b') / ||w||^2) w,   x_p = T^-1(z_p),   explanation = x - x_p

and the feature importance is the first-order Taylor term around the boundary point (where the
margin `f_c - f_k` is 0): `|d(f_c - f_k)/dx (x_p) * (x - x_p)|`; summed with signs it approximates
the margin at `x`. `c` is the predicted class and `k` the runner-up unless the caller names them
(`counterfactual=k`: "what would make this a k"). Everything is batched; nothing loops over points.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from xai.models.invertible import InvertibleClassifier
from xai.tensors import predict, to_unit

_BATCH = 1024


class AffineHead(Protocol):
    """A classifier head that is affine in the features: `logits = (weight * z).sum + bias`.

    >>> import torch, xai
    >>> from xai.models.invertible import toy_classifier
    >>> _ = torch.manual_seed(0)
    >>> model = toy_classifier(2, 3, blocks=2, hidden=8).eval()  # 2-D points, 3 classes
    >>> weight, bias = model.head.affine((2,))  # the head of an InvertibleClassifier is affine
    >>> weight.shape, bias.shape
    (torch.Size([3, 2]), torch.Size([3]))
    >>> z = torch.randn(5, 2)
    >>> with torch.no_grad():
    ...     torch.allclose(model.head(z), (weight * z[:, None]).sum(2) + bias, atol=1e-5)
    True
    """

    def __call__(self, z: torch.Tensor) -> torch.Tensor: ...

    def affine(self, feature_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """`(weight, bias)`: classes x *feature_shape and classes, so that each class's logit of
        one feature tensor `z` is `(weight[c] * z).sum() + bias[c]`."""
        ...


class Invertible(Protocol):
    """What projection and boundary importance need of a classifier `f(x) = head(T(x))`: the
    features `T(x)`, their inverse, an affine head, and the logits `f(x)` (differentiable in x).
    `xai.models.invertible.InvertibleClassifier` is one; any invertible network with these members works.

    >>> import torch, xai
    >>> from xai.models.invertible import toy_classifier
    >>> _ = torch.manual_seed(0)
    >>> model = toy_classifier(2, 3, blocks=2, hidden=8).eval()  # 2-D points, 3 classes
    >>> x = torch.randn(5, 2)  # an InvertibleClassifier follows the protocol
    >>> with torch.no_grad():
    ...     z = model.features(x)                    # T(x)
    ...     torch.allclose(model.inverse(z), x, atol=1e-5)  # T^-1(T(x)) = x
    ...     torch.allclose(model.head(z), model(x))  # f(x) = head(T(x))
    True
    True
    >>> xai.project(model, x).projected.shape  # so it can be projected
    torch.Size([5, 2])
    """

    head: AffineHead

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def inverse(self, z: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Projection:
    """Points, their projections onto the boundary between `source` and `counterfactual`.

    >>> import torch, xai
    >>> from xai.models.invertible import toy_classifier
    >>> _ = torch.manual_seed(0)
    >>> model = toy_classifier(2, 3, blocks=2, hidden=8).eval()  # 2-D points, 3 classes
    >>> x = torch.randn(5, 2)
    >>> p = xai.project(model, x, counterfactual=0, source=1)
    >>> isinstance(p, xai.Projection), p.source.tolist(), p.counterfactual.tolist()
    (True, [1, 1, 1, 1, 1], [0, 0, 0, 0, 0])
    >>> torch.equal(p.explanation, p.inputs - p.projected)
    True
    >>> with torch.no_grad():
    ...     logits = model(x)
    >>> torch.allclose(p.margin, logits[:, 1] - logits[:, 0], atol=1e-5)
    True
    >>> torch.allclose(model.features(p.projected), p.projected_features, atol=1e-4)
    True
    """

    inputs: torch.Tensor               # x
    projected: torch.Tensor            # x_p = T^-1(z_p)
    features: torch.Tensor             # z = T(x)
    projected_features: torch.Tensor   # z_p
    source: torch.Tensor               # c per point (int64)
    counterfactual: torch.Tensor       # k per point (int64)
    margin: torch.Tensor               # (f_c - f_k)(x) per point

    @property
    def explanation(self) -> torch.Tensor:
        """`x - x_p`: what separates each point from the boundary, in input space."""
        return self.inputs - self.projected


@dataclass(frozen=True)
class BoundaryCurve:
    """A sampled boundary of a 2-D classifier; NaN rows where the pair is not the top two."""

    classes: tuple[int, int]
    inputs: torch.Tensor     # n x 2, in input space (T^-1 of `features`)
    features: torch.Tensor   # n x 2, on the straight line in feature space


def _per_point(value: int | torch.Tensor | None, n: int, device: torch.device
               ) -> torch.Tensor | None:
    if value is None:
        return None
    return torch.as_tensor(value, dtype=torch.int64, device=device).expand(n).clone()


def runner_up(logits: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The class with the highest logit other than `source`, per row."""
    return logits.scatter(1, source[:, None], float("-inf")).argmax(dim=1)


def hyperplane(model: Invertible, source: torch.Tensor, counterfactual: torch.Tensor,
               feature_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point `(w, b')` of the boundary `w·z + b' = 0` between `source` and `counterfactual`.

    `w` has the shape of a batch of feature tensors (with pooling, the head's weight spread over
    every position), so `(w * z).sum() + b'` is `f_c - f_k` for that point.
    """
    if bool((source == counterfactual).any()):
        raise ValueError("a point cannot be projected onto the boundary between a class and itself")
    weight, bias = model.head.affine(feature_shape)
    return weight[source] - weight[counterfactual], bias[source] - bias[counterfactual]


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(dim=1)


def project_features(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor,
                     margin: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Orthogonal projection of each feature tensor onto the hyperplane `w·z + b = -margin`.

    `margin = 0` is the boundary itself; `margin > 0` lies that far (in logits) past it on the
    side where `w·z + b < 0`, i.e. where the counterfactual class wins by `margin`."""
    scale = (_dot(w, z) + b + margin) / _dot(w, w)
    return z - scale.view(-1, *([1] * (z.dim() - 1))) * w


@torch.no_grad()  # not inference_mode: `importance` takes gradients at the projections
def _project_batch(model: Invertible, x: torch.Tensor, source: torch.Tensor | None,
                   counterfactual: torch.Tensor | None) -> Projection:
    z = model.features(x)
    logits = model.head(z)
    c = logits.argmax(dim=1) if source is None else source
    k = runner_up(logits, c) if counterfactual is None else counterfactual
    w, b = hyperplane(model, c, k, tuple(z.shape[1:]))
    z_p = project_features(z, w, b)
    margin = logits.gather(1, c[:, None])[:, 0] - logits.gather(1, k[:, None])[:, 0]
    return Projection(x, model.inverse(z_p), z, z_p, c, k, margin)


def project(model: Invertible, x: torch.Tensor, *,
            counterfactual: int | torch.Tensor | None = None,
            source: int | torch.Tensor | None = None, batch_size: int = _BATCH) -> Projection:
    """Project float inputs `x` onto a decision boundary, in batches of `batch_size`.

    `source` (the class explained) defaults to the predicted class; `counterfactual` (the class on
    the other side) to the strongest other class. Either may be one class for all points or one per
    point. Runs without gradients; `model` should be in eval mode.

    >>> import torch, xai
    >>> from xai.models.invertible import toy_classifier
    >>> _ = torch.manual_seed(0)
    >>> model = toy_classifier(2, 3, blocks=2, hidden=8).eval()  # 2-D points, 3 classes
    >>> x = torch.randn(5, 2)
    >>> p = xai.project(model, x)  # onto the boundary with each point's runner-up class
    >>> p.projected.shape
    torch.Size([5, 2])
    >>> with torch.no_grad():
    ...     logits, projected = model(x), model(p.projected)
    >>> torch.equal(p.source, logits.argmax(1))
    True
    >>> c, k = p.source[:, None], p.counterfactual[:, None]
    >>> gap = projected.gather(1, c) - projected.gather(1, k)
    >>> bool((gap.abs() < 1e-4).all())  # on the boundary: the two logits are equal
    True
    """
    n = len(x)
    c_all = _per_point(source, n, x.device)
    k_all = _per_point(counterfactual, n, x.device)
    parts = [
        _project_batch(model, x[i:i + batch_size],
                       None if c_all is None else c_all[i:i + batch_size],
                       None if k_all is None else k_all[i:i + batch_size])
        for i in range(0, n, batch_size)
    ]
    return Projection(*(torch.cat([getattr(p, f) for p in parts]) for f in (
        "inputs", "projected", "features", "projected_features", "source", "counterfactual",
        "margin")))


def _batched_features(model: Invertible, x: torch.Tensor, batch_size: int
                      ) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, `T(x[start:start + batch_size])`) for each batch of inputs `x` (uint8 or floats)."""
    for i in range(0, len(x), batch_size):
        yield i, model.features(to_unit(x[i:i + batch_size]))


@torch.inference_mode()
def class_centres(model: Invertible, x: torch.Tensor, y: torch.Tensor, classes: int,
                  batch_size: int = _BATCH) -> torch.Tensor:
    """Where each class lies in feature space: the mean of `T(x)` over the points of each class
    (classes x feature shape), from inputs `x` (uint8 images or floats) with labels `y`, batched.

    A flow trained with cross-entropy and a likelihood need not put its data at the head's own
    class means; these are where the data are, the centres ECINN moves between.

    >>> import torch, xai
    >>> from xai.models.invertible import toy_classifier
    >>> _ = torch.manual_seed(0)
    >>> model = toy_classifier(2, 3, blocks=2, hidden=8).eval()  # 2-D points, 3 classes
    >>> x, y = torch.randn(30, 2), torch.arange(30) % 3
    >>> centres = xai.class_centres(model, x, y, classes=3)
    >>> centres.shape
    torch.Size([3, 2])
    >>> with torch.no_grad():
    ...     torch.allclose(centres[1], model.features(x[y == 1]).mean(0), atol=1e-5)
    True
    """
    counts = torch.bincount(y, minlength=classes)
    if len(counts) > classes or bool((counts == 0).any()):
        missing = [c for c in range(classes) if c >= len(counts) or counts[c] == 0]
        raise ValueError(f"class_centres needs points of every class in 0..{classes - 1}; "
                         f"labels out of range or classes without points: {missing}")
    sums = None
    for i, z in _batched_features(model, x, batch_size):
        if sums is None:
            sums = torch.zeros(classes, *z.shape[1:], dtype=torch.float64, device=z.device)
        sums.index_add_(0, y[i:i + batch_size], z.double())
    return (sums / counts.view(-1, *([1] * (sums.dim() - 1)))).to(z.dtype)


@dataclass(frozen=True)
class Prototypes:
    """Where each point's counterfactual heads (Van Looveren and Klaise, 2021, "Interpretable
    counterfactual explanations guided by prototypes"): for a point `z` and a target class `k`,
    the mean features of the `neighbours` training points of class `k` nearest to `z` in feature
    space. Moving towards it takes on what nearby examples of `k` look like, not the average of
    the whole class.

    >>> import torch, xai
    >>> from xai.models.invertible import toy_classifier
    >>> _ = torch.manual_seed(0)
    >>> model = toy_classifier(2, 3, blocks=2, hidden=8).eval()  # 2-D points, 3 classes
    >>> x, y = torch.randn(30, 2), torch.arange(30) % 3
    >>> prototypes = xai.Prototypes.of(model, x, y, neighbours=4)
    >>> z = torch.randn(5, 2)
    >>> prototypes(z, torch.tensor([0, 1, 2, 0, 1])).shape
    torch.Size([5, 2])
    """

    features: torch.Tensor  # N x D: the training points' flattened features
    labels: torch.Tensor    # N
    neighbours: int

    @classmethod
    @torch.inference_mode()
    def of(cls, model: Invertible, x: torch.Tensor, y: torch.Tensor, neighbours: int,
           batch_size: int = _BATCH) -> Prototypes:
        """Prototypes over the training inputs `x` (uint8 images or floats) with labels `y`."""
        features = torch.cat([z.flatten(1) for _, z in _batched_features(model, x, batch_size)])
        return cls(features, y.to(features.device), neighbours)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each point's prototype of its `target` class, shaped as `z`; batched per class."""
        flat = z.flatten(1)
        out = torch.empty_like(flat)
        for k in target.unique().tolist():
            rows = (target == k).nonzero().flatten()
            candidates = self.features[self.labels == k]
            if not len(candidates):
                raise ValueError(f"Prototypes: no training point of class {k}")
            nearest = torch.cdist(flat[rows], candidates).topk(
                min(self.neighbours, len(candidates)), largest=False).indices
            out[rows] = candidates[nearest].mean(1)
        return out.view_as(z)


def crossing_direction(w: torch.Tensor, source: torch.Tensor, counterfactual: torch.Tensor,
                       centres: torch.Tensor | None, towards: torch.Tensor | None = None
                       ) -> torch.Tensor:
    """Per point, the direction a counterfactual moves in feature space: the boundary's normal
    `-w` (towards `counterfactual`), or with `centres` ECINN's `centres[k] - centres[c]`, or
    `towards` (per point, `prototype - z`), wherever that points across the boundary (`w·d < 0`;
    the normal elsewhere)."""
    if towards is not None:
        d = towards
    elif centres is not None:
        d = centres[counterfactual] - centres[source]
    else:
        return -w
    across = (_dot(w, d) < 0).view(-1, *([1] * (w.dim() - 1)))
    return torch.where(across, d, -w)


@dataclass(frozen=True)
class Guide:
    """What a counterfactual moves along (`cross`): the boundary's normal ("normal"), the
    difference of the class centres ("class_centres", with `centres`) or each point's prototype
    ("prototype", with `prototypes`)."""

    direction: str = "normal"
    centres: torch.Tensor | None = None
    prototypes: Prototypes | None = None

    @classmethod
    def of(cls, direction: str, model: Invertible, x: torch.Tensor, y: torch.Tensor,
           classes: int, neighbours: int, batch_size: int = _BATCH) -> Guide:
        """The guide for `direction`, from training inputs `x` with labels `y`."""
        if direction == "class_centres":
            return cls(direction, centres=class_centres(model, x, y, classes, batch_size))
        if direction == "prototype":
            return cls(direction, prototypes=Prototypes.of(model, x, y, neighbours, batch_size))
        return cls(direction)

    def cross(self, model: Invertible, projection: Projection, margin: float,
              steps: torch.Tensor | None = None, batch_size: int = _BATCH) -> torch.Tensor:
        """`cross` along this guide."""
        return cross(model, projection, margin, steps, batch_size, centres=self.centres,
                     prototypes=self.prototypes)


@torch.no_grad()
def cross(model: Invertible, projection: Projection, margin: float,
          steps: torch.Tensor | None = None, batch_size: int = _BATCH,
          centres: torch.Tensor | None = None, prototypes: Prototypes | None = None
          ) -> torch.Tensor:
    """Counterfactuals across the boundary: `T^-1` of the features moved in a straight line until
    the counterfactual class beats the source by `margin` logits (`f_k - f_c = margin`; a third
    class can still be higher).

    By default the move is along the boundary's normal, `z_cf = z_p + margin / ||w|| * (-w /
    ||w||)`: the projection `x_p` and the crossed point differ only in the direction that
    separates the two classes. With `centres` (`class_centres` of the training data) it is along
    the difference between the two classes' centres, as in ECINN (Hvilshoj et al., 2021): the
    point takes on what the data of `k` have and those of `c` lack, not only the direction the
    head reads. With `prototypes` it goes towards the point's own prototype of `k` (the mean of
    its nearest training points of `k`), Van Looveren and Klaise's guide, and no further: where
    the prototype lies short of the margin, the rest of the way is along the normal (a straight
    line past the prototype leaves the data, and the inverse of far-off features blows up). The
    logits are affine in `z`, so the step that reaches the margin is exact. With `steps` (S values in [0, 1]) returns
    the walk from `x` (0) to the crossed point (1) instead,
    N x S x C x H x W; it crosses the boundary at `t* = m / (m + margin)` (`m`: the margin at
    `x`), at `x_p` itself for the normal's move.

    >>> import torch, xai
    >>> from xai.models.invertible import toy_classifier
    >>> _ = torch.manual_seed(0)
    >>> model = toy_classifier(2, 3, blocks=2, hidden=8).eval()  # 2-D points, 3 classes
    >>> x = torch.randn(5, 2)
    >>> p = xai.project(model, x)
    >>> crossed = xai.cross(model, p, margin=1.0)  # the runner-up wins by one logit
    >>> with torch.no_grad():
    ...     logits = model(crossed)
    >>> lead = logits.gather(1, p.counterfactual[:, None]) - logits.gather(1, p.source[:, None])
    >>> bool(((lead - 1.0).abs() < 1e-3).all())
    True
    >>> train_x, train_y = torch.randn(30, 2), torch.arange(30) % 3
    >>> centres = xai.class_centres(model, train_x, train_y, classes=3)
    >>> along = xai.cross(model, p, margin=1.0, centres=centres)  # ECINN's direction
    >>> with torch.no_grad():
    ...     logits = model(along)
    >>> lead = logits.gather(1, p.counterfactual[:, None]) - logits.gather(1, p.source[:, None])
    >>> bool(((lead - 1.0).abs() < 1e-3).all())
    True
    >>> xai.cross(model, p, 1.0, steps=torch.linspace(0, 1, 4)).shape  # the walk from x
    torch.Size([5, 4, 2])
    """
    out = []
    for i in range(0, len(projection.inputs), batch_size):
        z = projection.features[i:i + batch_size]
        c = projection.source[i:i + batch_size]
        k = projection.counterfactual[i:i + batch_size]
        w, b = hyperplane(model, c, k, tuple(z.shape[1:]))
        towards = None if prototypes is None else prototypes(z, k) - z
        d = crossing_direction(w, c, k, centres, towards)
        step = (_dot(w, z) + b + margin) / -_dot(w, d)
        if towards is not None:  # no further than the prototype: past it, the flow extrapolates
            step = torch.where(_dot(w, towards) < 0, step.clamp(max=1.0), step)
        shape = (-1, *([1] * (z.dim() - 1)))
        z_cf = z + step.view(shape) * d
        if towards is not None:  # the margin the prototype does not reach, along the normal
            rest = (_dot(w, z_cf) + b + margin).clamp_min(0)
            z_cf = z_cf - (rest / _dot(w, w)).view(shape) * w
        if steps is None:
            out.append(model.inverse(z_cf))
            continue
        t = steps.to(z).view(1, -1, *([1] * (z.dim() - 1)))
        line = z[:, None] + t * (z_cf - z)[:, None]
        out.append(model.inverse(line.flatten(0, 1)).unflatten(0, line.shape[:2]))
    return torch.cat(out)


def margin_at(model: Invertible, x: torch.Tensor, source: torch.Tensor,
              counterfactual: torch.Tensor, batch_size: int = _BATCH) -> torch.Tensor:
    """`f_c(x) - f_k(x)` per point, from a real forward pass (no gradients)."""
    logits = predict(model, x, batch_size)
    return logits.gather(1, source[:, None])[:, 0] - logits.gather(1, counterfactual[:, None])[:, 0]


def projection_residual(model: Invertible, projection: Projection,
                        batch_size: int = _BATCH) -> torch.Tensor:
    """`|f_c(x_p) - f_k(x_p)|` per point: 0 up to float error when `x_p` is on the boundary."""
    return margin_at(model, projection.projected, projection.source, projection.counterfactual,
                     batch_size).abs()


def importance(model: Invertible, projection: Projection,
               batch_size: int = _BATCH) -> torch.Tensor:
    """`|d(f_c - f_k)/dx (x_p) * (x - x_p)|`, shaped like the inputs.

    The gradient is taken at `x_p`, the point the first-order Taylor expansion is around (there the
    margin is 0), so the signed terms sum to about the margin at `x`.

    >>> import torch, xai
    >>> from xai.models.invertible import toy_classifier
    >>> _ = torch.manual_seed(0)
    >>> model = toy_classifier(2, 3, blocks=2, hidden=8).eval()  # 2-D points, 3 classes
    >>> x = torch.randn(5, 2)
    >>> p = xai.project(model, x)
    >>> scores = xai.importance(model, p)
    >>> scores.shape, bool((scores >= 0).all())
    (torch.Size([5, 2]), True)
    >>> on_boundary = xai.project(model, p.projected, source=p.source,
    ...                           counterfactual=p.counterfactual)
    >>> bool((xai.importance(model, on_boundary) < 1e-4).all())  # nothing separates it
    True
    """
    grads = []
    for i in range(0, len(projection.inputs), batch_size):
        x_p = projection.projected[i:i + batch_size].detach().requires_grad_(True)
        c = projection.source[i:i + batch_size, None]
        k = projection.counterfactual[i:i + batch_size, None]
        with torch.enable_grad():
            logits = model(x_p)
            margin = logits.gather(1, c) - logits.gather(1, k)
            # gradient into x_p only (the weights' .grad stay untouched); unlike
            # autograd.grad this also runs under torch's FLOP counter (xai.pipeline.bench)
            torch.autograd.backward(margin.sum(), inputs=[x_p])
        grads.append(x_p.grad)
    return (torch.cat(grads) * projection.explanation).abs()


@dataclass
class BoundaryImportance:
    """Captum-style attribution: `BoundaryImportance(model).attribute(inputs, target=None)`.

    `target` is the class explained (Captum's meaning; default: the predicted class), the boundary
    is the one with `counterfactual` (default: the strongest other class). Returns
    `|d(f_t - f_k)/dx (x_p) * (x - x_p)|`, a tensor shaped like `inputs`. It explains the
    invertible classifier itself; `name` labels it in an evaluation, and `dataclasses.replace(
    method, model=other)` gives the same method for another model (the randomisation check).

    >>> import torch, xai
    >>> from xai.models.invertible import toy_classifier
    >>> _ = torch.manual_seed(0)
    >>> model = toy_classifier(2, 3, blocks=2, hidden=8).eval()  # 2-D points, 3 classes
    >>> x = torch.randn(5, 2)
    >>> scores = xai.BoundaryImportance(model).attribute(x)  # the predicted classes
    >>> scores.shape
    torch.Size([5, 2])
    >>> torch.equal(scores, xai.importance(model, xai.project(model, x)))
    True
    >>> xai.BoundaryImportance(model).attribute(x, target=0, counterfactual=2).shape
    torch.Size([5, 2])
    """

    model: Invertible
    name: str = "boundary_projection"

    def attribute(self, inputs: torch.Tensor, target: int | torch.Tensor | None = None,
                  counterfactual: int | torch.Tensor | None = None) -> torch.Tensor:
        projection = project(self.model, inputs, source=target, counterfactual=counterfactual)
        return importance(self.model, projection)


# ----------------------------------------------------------------------------- 2-D curves


@torch.inference_mode()
def boundary_curve(model: InvertibleClassifier, classes: tuple[int, int], cover: torch.Tensor,
                   n: int = 512, pad: float = 0.25) -> BoundaryCurve:
    """The boundary between two classes of a 2-D classifier, sampled along its direction.

    Feature-space points `z0 + t d` are spaced evenly along the line's direction `d` (no division by
    a weight component, so vertical and horizontal boundaries work), over the span of the feature
    points `cover` (e.g. `T` of the plotted inputs) widened by `pad` of it on each side, and mapped
    back to input space in one batched `T^-1`. Points where the two classes are not the top two
    (with three or more classes) are NaN, which breaks a plotted line there.
    """
    c, k = classes
    weight, bias = model.head.affine((2,))
    w, b = weight[c] - weight[k], bias[c] - bias[k]
    norm2 = w.dot(w)
    z0 = -b * w / norm2
    direction = torch.stack([-w[1], w[0]]) / norm2.sqrt()
    t = (cover - z0) @ direction
    span = (t.max() - t.min()).clamp_min(1e-6)
    t = torch.linspace(float(t.min() - pad * span), float(t.max() + pad * span), n,
                       dtype=w.dtype, device=w.device)
    z = z0 + t[:, None] * direction
    logits = model.head(z)
    pair = logits[:, [c, k]].min(dim=1).values
    others = logits.index_fill(1, torch.tensor([c, k], device=z.device), float("-inf"))
    keep = others.max(dim=1).values <= pair
    x = torch.full_like(z, float("nan"))
    x[keep] = model.inverse(z[keep])
    z = torch.where(keep[:, None], z, torch.full_like(z, float("nan")))
    return BoundaryCurve((c, k), x, z)


def boundary_curves(model: InvertibleClassifier, cover: torch.Tensor, n: int = 512
                    ) -> list[BoundaryCurve]:
    """`boundary_curve` for every pair of classes (one curve for two classes)."""
    pairs = itertools.combinations(range(model.num_classes), 2)
    return [boundary_curve(model, pair, cover, n) for pair in pairs]
