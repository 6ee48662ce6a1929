"""How good the invertible image classifier's counterfactuals are, measured on the test set.

For every test image `x` (source class `c` = the model's prediction, target `k` = its runner-up)
the counterfactual `x_cf` is `T^-1` of `T(x)` moved across the boundary until `k` wins by `margin`
logits (`xai.explain.boundary.cross`). The measures (Wachter et al. 2017; Van Looveren and Klaise 2019):

- validity: the independent black box, shown `x_cf` clipped to [0, 1] (the picture a person
  sees), answers `k`; `reached`: the invertible model itself answers `k` (1 up to float error);
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

import torch

from xai.data.prepared import Split
from xai.evaluation.measures import chunk_scores, expand, posthoc_agreement, top_k_mask
from xai.explain import boundary
from xai.explain.attribution import GradientSaliency
from xai.models.invertible import InvertibleClassifier
from xai.settings import bounded
from xai.train.invertible import dequantize
from xai.train.loop import to_unit

#: A pixel counts as out of range when it lies more than this outside [0, 1].
RANGE_TOLERANCE = 0.05


@dataclass(frozen=True)
class InvertibleCounterfactualConfig:
    """Counterfactuals of the image invertible classifier and how they are measured: `margin`
    logits past the boundary; the importance's post-hoc accuracy keeps `posthoc_k` chunks of
    `posthoc_chunk` x `posthoc_chunk` pixels."""

    margin: float = bounded(20.0, ge=0)
    posthoc_k: int = bounded(4, ge=1)
    posthoc_chunk: int = bounded(4, ge=1)
    batch_size: int = bounded(500, ge=1)


@torch.no_grad()
def bits_per_dim(model: InvertibleClassifier, x: torch.Tensor) -> torch.Tensor:
    """`-log2 p(x) / D + 8` per image for float images in [0, 1] (8-bit data's convention:
    the density of the [0, 1] pixels, plus the log2(256) of the scale to 0..255)."""
    log_px = torch.logsumexp(model.log_joint(x), dim=1)
    return -log_px / (x[0].numel() * math.log(2)) + 8.0


def _posthoc(model: InvertibleClassifier, x: torch.Tensor, scores: torch.Tensor,
             predicted: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    keep = expand(top_k_mask(chunk_scores(scores, chunk), k), tuple(x.shape[1:]), chunk)
    return posthoc_agreement(model, x, keep, predicted).float()


def counterfactual_quality(model: InvertibleClassifier, blackbox: torch.nn.Module, test: Split,
                           margin: float, k: int, chunk: int, batch_size: int,
                           generator: torch.Generator) -> dict[str, float]:
    """The measures of the module docstring over all of `test` (uint8 images), in batches;
    `generator` draws the dequantisation noise of the real images."""
    sums: dict[str, float] = {}

    def add(name: str, values: torch.Tensor) -> None:
        sums[name] = sums.get(name, 0.0) + float(values.double().sum())

    model.eval()
    for i in range(0, len(test), batch_size):
        raw = test.x[i:i + batch_size]
        x = to_unit(raw)
        projection = boundary.project(model, x, batch_size=batch_size)
        x_cf = boundary.cross(model, projection, margin, batch_size=batch_size)
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
        predicted = projection.source
        add("boundary_posthoc", _posthoc(model, x, boundary.importance(model, projection),
                                         predicted, k, chunk))
        saliency = GradientSaliency(model).attribute(x, predicted)
        add("saliency_posthoc", _posthoc(model, x, saliency, predicted, k, chunk))
    n = len(test)
    m = {name: total / n for name, total in sums.items()}
    return {
        "image_counterfactual_validity": m["validity"],
        "image_counterfactual_reached": m["reached"],
        "image_counterfactual_l1": m["l1"],
        "image_counterfactual_l2": m["l2"],
        "image_counterfactual_out_of_range": m["out_of_range"],
        "image_counterfactual_bits_per_dim": m["bits_per_dim"],
        "image_test_bits_per_dim": m["test_bits_per_dim"],
        "image_counterfactual_bits_per_dim_gap": m["bits_per_dim"] - m["test_bits_per_dim"],
        f"image_boundary_posthoc_accuracy_k{k}": m["boundary_posthoc"],
        f"image_saliency_posthoc_accuracy_k{k}": m["saliency_posthoc"],
    }
