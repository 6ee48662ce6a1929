"""How good the invertible image classifier's counterfactuals are, measured on the test set.

For every test image `x` (source class `c` = the model's prediction, target `k` = its runner-up)
the counterfactual `x_cf` is `T^-1` of `T(x)` moved across the boundary until `k` wins by `margin`
logits (`xai.explain.boundary.cross`): along the difference between the two classes' centres in
feature space (`direction` "class_centres", ECINN's move), towards the image's prototype of `k`
(the mean of its `neighbours` nearest training images of `k` in feature space; "prototype", Van
Looveren and Klaise 2021) or along the boundary's normal ("normal"). The measures (Wachter et
al. 2017; Van Looveren and Klaise 2019):

- validity: the independent black box, shown `x_cf` clipped to [0, 1] (the picture a person
  sees), answers `k`; `reached`: the invertible model itself answers `k` (the margin is over `c`
  only, so this falls below 1 where a third class overtakes both on the way);
- proximity: mean L1 and L2 norm of `x - x_cf` (pixels in [0, 1]);
- plausibility: bits per dimension under the flow of the picture a person sees (`x_cf` clipped
  to [0, 1] and quantised to 8 bits), beside those of the real test images, both dequantised as
  in training (a pixel the move saturated has a log-density near minus infinity as a float,
  which says nothing of the picture), and the share of pixels more than `RANGE_TOLERANCE`
  outside [0, 1] before clipping;
- the boundary importance's post-hoc accuracy: the model shown only the top `k` chunks of
  `|d(f_c - f_k)/dx (x_p) * (x - x_p)|` (the rest 0) keeps its prediction; beside the same
  figure for gradient saliency `|d f_c / dx|` on the same model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from xai.chunks import chunk_scores, expand, top_k_mask
from xai.data.augment import dequantize
from xai.data.prepared import Split
from xai.evaluation.measures import posthoc_agreement
from xai.evaluation.uncertainty import bootstrap, paired_difference, resample_indices
from xai.explain import boundary
from xai.explain.attribution import GradientSaliency
from xai.models.invertible import InvertibleClassifier
from xai.settings import bounded
from xai.tensors import to_unit

#: A pixel counts as out of range when it lies more than this outside [0, 1].
RANGE_TOLERANCE = 0.05


@dataclass(frozen=True)
class InvertibleCounterfactualConfig:
    """Counterfactuals of the image invertible classifier and how they are measured: `margin`
    logits past the boundary, moving in `direction`; the importance's post-hoc accuracy keeps
    `posthoc_k` chunks of `posthoc_chunk` x `posthoc_chunk` pixels; each FID's interval is over
    `fid_resamples` bootstrap resamples (`xai.evaluation.counterfactual_measures`); the black
    box, which says whether a counterfactual is valid, runs in `precision` (`xai.devices`)."""

    margin: float = bounded(12.5, ge=0)
    direction: Literal["class_centres", "normal", "prototype"] = "prototype"
    neighbours: int = bounded(5, ge=1)  # "prototype": training images of the target averaged
    posthoc_k: int = bounded(4, ge=1)
    posthoc_chunk: int = bounded(4, ge=1)
    batch_size: int = bounded(500, ge=1)
    fid_resamples: int = bounded(200, ge=10)
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # of the black box's passes


@torch.no_grad()
def bits_per_dim(model: InvertibleClassifier, x: torch.Tensor) -> torch.Tensor:
    """`-log2 p(x) / D + 8` per image for float images in [0, 1] (8-bit data's convention:
    the density of the [0, 1] pixels, plus the log2(256) of the scale to 0..255)."""
    log_px = torch.logsumexp(model.log_joint(x), dim=1)
    return -log_px / (x[0].numel() * math.log(2)) + 8.0


def guide_for(cf: InvertibleCounterfactualConfig, model: InvertibleClassifier, train: Split,
              classes: int) -> boundary.Guide:
    """What the counterfactuals of `cf.direction` move along, from the training images."""
    return boundary.Guide.of(cf.direction, model, train.x, train.y, classes, cf.neighbours,
                             cf.batch_size)


def _posthoc(model: InvertibleClassifier, x: torch.Tensor, scores: torch.Tensor,
             predicted: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    keep = expand(top_k_mask(chunk_scores(scores, chunk), k), tuple(x.shape[1:]), chunk)
    return posthoc_agreement(model, x, keep, predicted).float()


def per_image_quality(model: InvertibleClassifier, blackbox: torch.nn.Module, test: Split,
                      margin: float, k: int, chunk: int, batch_size: int,
                      generator: torch.Generator, guide: boundary.Guide = boundary.Guide(),
                      posthoc: bool = True) -> dict[str, torch.Tensor]:
    """Each measure of the module docstring per image of `test` (uint8 images; N values each, on
    the CPU), in batches: `validity`, `reached`, `l1`, `l2`, `out_of_range`, `bits_per_dim`,
    `test_bits_per_dim` and, with `posthoc`, `boundary_posthoc` and `saliency_posthoc`.
    `generator` draws the dequantisation noise of the real images; `guide` (`guide_for`) is what
    the counterfactuals move along (default: the boundary's normal)."""
    parts: dict[str, list[torch.Tensor]] = {}

    def add(name: str, values: torch.Tensor) -> None:
        parts.setdefault(name, []).append(values.detach().double().cpu())

    model.eval()
    for i in range(0, len(test), batch_size):
        raw = test.x[i:i + batch_size]
        x = to_unit(raw)
        projection = boundary.project(model, x, batch_size=batch_size)
        x_cf = guide.cross(model, projection, margin, batch_size=batch_size)
        target = projection.counterfactual
        with torch.no_grad():
            add("validity", blackbox(x_cf.clamp(0, 1)).argmax(1) == target)
            add("reached", model(x_cf).argmax(1) == target)
        delta = (x - x_cf).flatten(1)
        add("l1", delta.abs().sum(1))
        add("l2", delta.norm(dim=1))
        add("out_of_range", ((x_cf < -RANGE_TOLERANCE) | (x_cf > 1 + RANGE_TOLERANCE))
            .flatten(1).float().mean(1))
        picture = (x_cf.clamp(0, 1) * 255).round().to(torch.uint8)
        noise = torch.rand((2, *raw.shape), generator=generator).to(raw.device)
        add("bits_per_dim", bits_per_dim(model, dequantize(picture, noise[0])))
        add("test_bits_per_dim", bits_per_dim(model, dequantize(raw, noise[1])))
        if posthoc:
            predicted = projection.source
            add("boundary_posthoc", _posthoc(model, x, boundary.importance(model, projection),
                                             predicted, k, chunk))
            saliency = GradientSaliency(model).attribute(x, predicted)
            add("saliency_posthoc", _posthoc(model, x, saliency, predicted, k, chunk))
    return {name: torch.cat(values) for name, values in parts.items()}


def counterfactual_quality(model: InvertibleClassifier, blackbox: torch.nn.Module, test: Split,
                           margin: float, k: int, chunk: int, batch_size: int,
                           generator: torch.Generator, guide: boundary.Guide = boundary.Guide(),
                           resamples: int = 1000, seed: int = 0) -> dict[str, float]:
    """The measures of `per_image_quality` averaged over `test`, with 95 % bootstrap intervals
    over images (`resamples`, seeded by `seed`) for validity, the out-of-range share and the
    boundary importance's post-hoc accuracy minus saliency's (paired over images)."""
    per = per_image_quality(model, blackbox, test, margin, k, chunk, batch_size, generator,
                            guide)
    m = {name: float(v.mean()) for name, v in per.items()}
    indices = resample_indices(len(test), resamples, seed)
    validity = bootstrap(per["validity"], indices)
    out_of_range = bootstrap(per["out_of_range"], indices)
    posthoc_gap = paired_difference(per["boundary_posthoc"], per["saliency_posthoc"], indices)
    return {
        "image_counterfactual_validity": m["validity"],
        "image_counterfactual_validity_low": validity.low,
        "image_counterfactual_validity_high": validity.high,
        "image_counterfactual_reached": m["reached"],
        "image_counterfactual_l1": m["l1"],
        "image_counterfactual_l2": m["l2"],
        "image_counterfactual_out_of_range": m["out_of_range"],
        "image_counterfactual_out_of_range_low": out_of_range.low,
        "image_counterfactual_out_of_range_high": out_of_range.high,
        "image_counterfactual_bits_per_dim": m["bits_per_dim"],
        "image_test_bits_per_dim": m["test_bits_per_dim"],
        "image_counterfactual_bits_per_dim_gap": m["bits_per_dim"] - m["test_bits_per_dim"],
        f"image_boundary_posthoc_accuracy_k{k}": m["boundary_posthoc"],
        f"image_saliency_posthoc_accuracy_k{k}": m["saliency_posthoc"],
        f"image_boundary_minus_saliency_posthoc_k{k}": posthoc_gap.mean,
        f"image_boundary_minus_saliency_posthoc_k{k}_low": posthoc_gap.low,
        f"image_boundary_minus_saliency_posthoc_k{k}_high": posthoc_gap.high,
    }
