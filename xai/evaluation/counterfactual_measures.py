"""Counterfactuals measured as the literature measures them (Van Looveren and Klaise 2021;
Hvilshoj, Iosifidis and Assent 2021), with the measurement models of
`xai.models.measurement` (trained on training images only, independent of every explained model).

For a counterfactual `x_cf` of an image of source class `o` (the explained model's prediction)
towards target class `t`, on the picture a person sees (`x_cf` clipped to [0, 1]) scaled to
[-0.5, 0.5] as the models were trained:

- IM1 = `||x_cf - AE_t(x_cf)||^2 / (||x_cf - AE_o(x_cf)||^2 + eps)`: how much better the target
  class's autoencoder reconstructs it than the source class's (lower is better);
- IM2 = `||AE_t(x_cf) - AE_all(x_cf)||^2 / (||x_cf||_1 + eps)`: how far the target class's
  reconstruction lies from the all-class autoencoder's (lower is better);
- oracle validity: the oracle (another architecture, trained on its own) answers `t`;
- FID in the oracle's last hidden layer: the counterfactuals against the inputs they came from
  (the paper's) and against real test images of the target class (one drawn per counterfactual);
- validity by the black box, proximity (L1 of `x - x_cf`) and the out-of-range share (pixels of
  the unclipped `x_cf` more than `RANGE_TOLERANCE` outside [0, 1]).

IM1 spans a narrow range whatever the method, so every set of counterfactuals is measured beside
two reference rows by the same code: real test images of the target class standing in as the
counterfactuals (`real`, what a perfect counterfactual scores) and the unchanged inputs
(`unchanged`, what no change scores); the normalised IM1 `(IM1_cf - IM1_real) / (IM1_unchanged -
IM1_real)` is 0 for a counterfactual as good as a real image, 1 for one as bad as no change.
Every mean has a 95 % bootstrap interval over images; the rows are aligned image by image, so the
normalised IM1 and the FIDs are resampled with the same images in every row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from xai.data.prepared import Split
from xai.evaluation.counterfactuals import RANGE_TOLERANCE
from xai.evaluation.uncertainty import Interval, bootstrap
from xai.explain import boundary
from xai.models.invertible import InvertibleClassifier
from xai.models.measurement import MeasurementModels, scale
from xai.tensors import predict, to_unit

#: Added to IM1's and IM2's denominators.
EPS = 1e-8
#: The per-image measures of a row, in the order the metrics list them.
MEASURES = ("im1", "im2", "oracle_validity", "blackbox_validity", "l1", "out_of_range")


def squared_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`||x - y||^2` per image (summed over every pixel), in float64."""
    return (x.double() - y.double()).pow(2).flatten(1).sum(1)


@torch.inference_mode()
def im1_im2(models: MeasurementModels, pictures: torch.Tensor, source: torch.Tensor,
            target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IM1 and IM2 (N each, float64) of `pictures` (floats in [0, 1], N x C x H x W) from
    classes `source` towards `target` (N each)."""
    xs = scale(pictures.float())
    rec_t = models.class_aes.reconstruct(xs, target)
    rec_o = models.class_aes.reconstruct(xs, source)
    rec_all = models.all_ae(xs)
    im1 = squared_error(xs, rec_t) / (squared_error(xs, rec_o) + EPS)
    im2 = squared_error(rec_t, rec_all) / (xs.double().abs().flatten(1).sum(1) + EPS)
    return im1, im2


@torch.inference_mode()
def oracle_outputs(models: MeasurementModels, pictures: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle's answer (N) and its last hidden layer (N x d, float64) for `pictures`."""
    features = models.oracle.features(scale(pictures.float()))
    return models.oracle.head(features).argmax(1), features.double()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Frechet distance between Gaussians fitted to feature sets `a` and `b` (rows are
    images): `||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)`, FID's formula."""
    return float(_frechet(a.double()[None], b.double()[None])[0])


def _moments(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Means (R x d) and covariances (R x d x d, unbiased) of R sets of features (R x N x d)."""
    mu = f.mean(1)
    centred = f - mu[:, None]
    return mu, centred.transpose(1, 2) @ centred / max(f.shape[1] - 1, 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp(min=0).sqrt()[..., None, :]) @ vectors.transpose(-1, -2)


def _frechet(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Frechet distances of R pairs of feature sets (R x N x d each), R values."""
    mu_a, cov_a = _moments(a)
    mu_b, cov_b = _moments(b)
    root_a = _sqrt_psd(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum(-1)
    trace = cov_a.diagonal(dim1=-2, dim2=-1).sum(-1) + cov_b.diagonal(dim1=-2, dim2=-1).sum(-1)
    # a distance: float error below 0 for identical sets is 0
    return ((mu_a - mu_b).pow(2).sum(-1) + trace - 2 * cross).clamp(min=0)


def frechet_interval(a: torch.Tensor, b: torch.Tensor, indices: torch.Tensor,
                     level: float = 0.95, chunk: int = 10) -> Interval:
    """`frechet_distance(a, b)` and its interval over the resamples `indices` (B x N row
    indices, applied to both sets: `a` and `b` are paired image by image).

    Resampling with replacement repeats images, which biases the resampled distances upward (near
    a distance of 0 the whole percentile interval lies above the estimate), so the interval is the
    percentile interval shifted by that bias (the resamples' mean minus the estimate), kept at 0
    or above."""
    a, b = a.double(), b.double()
    values = []
    for i in range(0, len(indices), chunk):
        idx = indices[i:i + chunk]
        values.append(_frechet(a[idx], b[idx]))
    spread = torch.cat(values)
    estimate = frechet_distance(a, b)
    bias = spread.mean().item() - estimate
    alpha = (1 - level) / 2
    low, high = torch.quantile(spread, torch.tensor([alpha, 1 - alpha], dtype=spread.dtype))
    return Interval(estimate, max(low.item() - bias, 0.0), max(high.item() - bias, 0.0))


def real_stand_ins(labels: torch.Tensor, target: torch.Tensor, own: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """For each counterfactual, the index of a real image (in the split `labels` label) of its
    `target` class, drawn at random with `generator`, never the image `own` it was made from."""
    labels, target, own = labels.cpu(), target.cpu(), own.cpu()
    classes = int(max(labels.max(), target.max())) + 1
    members = [torch.nonzero(labels == c).flatten() for c in range(classes)]
    counts = torch.tensor([len(m) for m in members])
    if bool((counts[target] < 2).any()):
        raise ValueError("each target class needs at least two real images to stand in")
    table = torch.full((classes, int(counts.max())), -1, dtype=torch.int64)
    for c, m in enumerate(members):
        table[c, :len(m)] = m
    draw = (torch.rand(len(target), generator=generator) * counts[target]).long()
    picked = table[target, draw]
    again = picked == own  # the image itself: take the next member of its class instead
    picked[again] = table[target[again], (draw[again] + 1) % counts[target[again]]]
    return picked


@torch.inference_mode()
def row_measures(models: MeasurementModels, blackbox: torch.nn.Module, inputs: torch.Tensor,
                 moved: torch.Tensor, source: torch.Tensor, target: torch.Tensor,
                 batch_size: int) -> dict[str, torch.Tensor]:
    """The per-image measures of `MEASURES` (float64, on the CPU) and the oracle's `features`
    for counterfactuals `moved` (unclipped) of `inputs` (floats in [0, 1]) from `source` towards
    `target`, in batches."""
    parts: dict[str, list[torch.Tensor]] = {}

    def add(name: str, values: torch.Tensor) -> None:
        parts.setdefault(name, []).append(values.detach().double().cpu())

    for i in range(0, len(inputs), batch_size):
        x, m = inputs[i:i + batch_size].float(), moved[i:i + batch_size].float()
        s, t = source[i:i + batch_size], target[i:i + batch_size]
        picture = m.clamp(0, 1)
        im1, im2 = im1_im2(models, picture, s, t)
        answer, features = oracle_outputs(models, picture)
        add("im1", im1)
        add("im2", im2)
        add("oracle_validity", answer == t)
        add("blackbox_validity", blackbox(picture).argmax(1) == t)
        add("l1", (x - m).flatten(1).abs().sum(1))
        add("out_of_range", ((m < -RANGE_TOLERANCE) | (m > 1 + RANGE_TOLERANCE))
            .flatten(1).float().mean(1))
        add("features", features)
    return {name: torch.cat(values) for name, values in parts.items()}


@dataclass(frozen=True)
class Crossings:
    """Counterfactuals of a set of test images, with what the reference rows need: `index` (the
    test images they came from), `inputs` (those images in [0, 1]), `moved` (the counterfactuals,
    unclipped), `source` and `target` classes."""

    index: torch.Tensor
    inputs: torch.Tensor
    moved: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor


def make_crossings(model: InvertibleClassifier, test: Split, margin: float, batch_size: int,
                   guide: boundary.Guide = boundary.Guide(), target: int | None = None
                   ) -> Crossings:
    """The counterfactuals `boundary.cross` makes of the images of `test` (uint8), `margin`
    logits past the boundary with each image's runner-up class, or with class `target` for the
    images the model does not already put in `target`."""
    x = to_unit(test.x)
    index = torch.arange(len(x), device=x.device)
    if target is not None:
        keep = predict(model, x, batch_size).argmax(1) != target
        x, index = x[keep], index[keep]
    projection = boundary.project(model, x, counterfactual=target, batch_size=batch_size)
    moved = guide.cross(model, projection, margin, batch_size=batch_size)
    return Crossings(index.cpu(), x, moved, projection.source, projection.counterfactual)


def measure_crossings(models: MeasurementModels, blackbox: torch.nn.Module, test: Split,
                      crossings: Crossings, batch_size: int, generator: torch.Generator,
                      indices: torch.Tensor, fid_indices: torch.Tensor, prefix: str
                      ) -> dict[str, float]:
    """Every measure of the module docstring for `crossings` (row `prefix`) and its reference
    rows `prefix_real` and `prefix_unchanged`, each mean with `_low` and `_high` (`indices`,
    B x N resamples of the N images; `fid_indices` the FIDs' resamples), the normalised IM1
    (`prefix_im1_normalised`) and the number of images (`prefix_images`)."""
    c = crossings
    labels = test.y.cpu()
    stand_in = real_stand_ins(labels, c.target, c.index, generator)
    reference = real_stand_ins(labels, c.target, c.index, generator)  # an independent draw
    real = test.x[stand_in.to(test.x.device)].float() / 255.0
    rows = {
        prefix: row_measures(models, blackbox, c.inputs, c.moved, c.source, c.target, batch_size),
        f"{prefix}_real": row_measures(models, blackbox, c.inputs, real, c.source, c.target,
                                       batch_size),
        f"{prefix}_unchanged": row_measures(models, blackbox, c.inputs, c.inputs, c.source,
                                            c.target, batch_size),
    }
    _, real_features = oracle_outputs(models, test.x[reference.to(test.x.device)].float() / 255)
    input_features = rows[f"{prefix}_unchanged"]["features"]
    out: dict[str, float] = {f"{prefix}_images": float(len(c.index))}
    for name, per in rows.items():
        for measure in MEASURES:
            _put(out, f"{name}_{measure}", bootstrap(per[measure], indices))
        _put(out, f"{name}_fid", frechet_interval(per["features"], input_features, fid_indices))
        _put(out, f"{name}_fid_real", frechet_interval(per["features"], real_features.cpu(),
                                                       fid_indices))
    _put(out, f"{prefix}_im1_normalised", normalised_im1(
        rows[prefix]["im1"], rows[f"{prefix}_real"]["im1"], rows[f"{prefix}_unchanged"]["im1"],
        indices))
    return out


def normalised_im1(cf: torch.Tensor, real: torch.Tensor, unchanged: torch.Tensor,
                   indices: torch.Tensor, level: float = 0.95) -> Interval:
    """`(mean IM1_cf - mean IM1_real) / (mean IM1_unchanged - mean IM1_real)` over images
    (aligned image by image), with its interval over the resamples `indices`."""
    cf, real, unchanged = cf.double(), real.double(), unchanged.double()

    def ratio(a: torch.Tensor, r: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return (a - r) / (u - r)

    spread = ratio(cf[indices].mean(1), real[indices].mean(1), unchanged[indices].mean(1))
    alpha = (1 - level) / 2
    low, high = torch.quantile(spread, torch.tensor([alpha, 1 - alpha], dtype=spread.dtype))
    return Interval(float(ratio(cf.mean(), real.mean(), unchanged.mean())), low.item(),
                    high.item())


def _put(out: dict[str, float], key: str, interval: Interval) -> None:
    out[key] = interval.mean
    out[f"{key}_low"] = interval.low
    out[f"{key}_high"] = interval.high


def headline(metrics: Mapping[str, float], prefix: str) -> str:
    """One line of a row's literature measures, for the stage's log."""
    def ci(key: str, fmt: str) -> str:
        return (f"{metrics[key]:{fmt}} [{metrics[key + '_low']:{fmt}}, "
                f"{metrics[key + '_high']:{fmt}}]")
    return (f"{prefix}: IM1 {ci(prefix + '_im1', '.3f')} (normalised "
            f"{ci(prefix + '_im1_normalised', '.2f')}), IM2 {ci(prefix + '_im2', '.4f')}, oracle "
            f"{ci(prefix + '_oracle_validity', '.3f')}, FID {metrics[prefix + '_fid']:.1f}")


#: Hvilshoj, Iosifidis and Assent (2021), "On Quantitative Evaluations of Counterfactuals",
#: MNIST, about 10,000 counterfactuals per method: IM1, IM2, FID, oracle validity.
PUBLISHED = (("gradient-based", 0.994, 0.0055, 50.2, 0.734),
             ("GL", 0.993, 0.0053, 308.4, 0.377),
             ("generative (GEN)", 0.884, 0.0017, 90.7, 0.931))


def markdown(metrics: Mapping[str, float], published: bool = False) -> str:
    """The literature's measures in `metrics` as a table: the runner-up crossings and the
    crossings to the named target where measured, each beside its two reference rows (and the
    published MNIST rows first, with `published`)."""
    def ci(key: str, fmt: str) -> str:
        return (f"{metrics[key]:{fmt}} [{metrics[key + '_low']:{fmt}}, "
                f"{metrics[key + '_high']:{fmt}}]")

    lines = [("| counterfactuals | IM1 | normalised IM1 | IM2 | FID (vs inputs) | FID (vs real "
              "target-class images) | oracle validity | black-box validity | pixels out of range "
              "| L1 | images |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| published: {name} | {im1:.3f} | | {im2:.4f} | {fid:.1f} | | {oracle:.3f} | | "
              "| | ~10,000 |" for name, im1, im2, fid, oracle in (PUBLISHED if published else ())]
    target = metrics.get("target_class")
    groups = [("runner_up", "runner-up crossings")]
    if target is not None:
        groups.append(("target", f"crossings to class {target:g}"))
    for prefix, title in groups:
        for row, label in ((prefix, f"this project: {title}"),
                           (f"{prefix}_real", (f"reference: real test images of the target "
                                               f"class ({title})")),
                           (f"{prefix}_unchanged", f"reference: the unchanged input ({title})")):
            normalised = ci(f"{prefix}_im1_normalised", ".2f") if row == prefix else ""
            lines.append(
                f"| {label} | {ci(row + '_im1', '.3f')} | {normalised} | "
                f"{ci(row + '_im2', '.4f')} | {ci(row + '_fid', '.1f')} | "
                f"{ci(row + '_fid_real', '.1f')} | {ci(row + '_oracle_validity', '.3f')} | "
                f"{ci(row + '_blackbox_validity', '.3f')} | {ci(row + '_out_of_range', '.4f')} | "
                f"{ci(row + '_l1', '.1f')} | {metrics[prefix + '_images']:,.0f} |")
    return "\n".join(lines)
