"""Explanation methods behind one call shape, Captum's: `attribute(inputs, target) -> map`.

Every method returns an attribution map the size of the input (N x C x H x W) for the class
`target` of the model it explains, so the evaluation can reduce any of them to chunk scores and
measure them the same way. Gradient methods, occlusion, LIME and KernelSHAP are Captum's own;
the perturbation methods (occlusion, LIME, KernelSHAP) work on the chunk grid of the VIBI
explainer (removed chunks set to 0), so their features are the chunks every method is scored on.
`model` is the model the maps explain; replacing it (`dataclasses.replace`) gives the same method
for another model, which the sanity checks use.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch
from captum.attr import (GradientShap, InputXGradient, IntegratedGradients,
                         KernelShap, Lime, NoiseTunnel, Saliency)
from torch import nn

from xai.measures import chunk_areas, chunk_grid, chunks_to_pixels, expand


class Attribution(Protocol):
    """What the evaluation needs of a method."""

    name: str
    model: nn.Module  # the model whose decisions the attributions explain

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


def chunk_ids(shape: tuple[int, ...], chunk: int, device: torch.device | str = "cpu"
              ) -> torch.Tensor:
    """1 x 1 x H x W long tensor: the index of the chunk (shared by the channels) of each pixel."""
    grid = chunk_grid(shape, chunk)
    ids = torch.arange(grid[1] * grid[2], device=device, dtype=torch.float32)
    return chunks_to_pixels(ids[None], grid, chunk, shape[1:]).long()


def spread(values: torch.Tensor, shape: tuple[int, ...], chunk: int) -> torch.Tensor:
    """N x d chunk values -> N x C x H x W map whose sum over each chunk is the chunk's value."""
    area = chunk_areas(shape, chunk).to(values.device)
    return expand(values / area, shape, chunk).contiguous()


def _per_chunk(pixel_map: torch.Tensor, chunk: int) -> torch.Tensor:
    """A map constant on each chunk (as Captum's grouped methods return) -> N x d values."""
    ids = chunk_ids(tuple(pixel_map.shape[1:]), chunk, pixel_map.device).flatten()
    first = torch.zeros(int(ids.max()) + 1, dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, ids, torch.arange(len(ids), device=ids.device), "amin",
                          include_self=False)
    return pixel_map[:, 0].flatten(1)[:, first]


@contextlib.contextmanager
def _one_surrogate_per_image() -> Iterator[None]:
    """Silence Captum's warning that a batch fits one surrogate per image: that is what we want."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You are providing multiple inputs")
        yield


def _probabilities(model: nn.Module) -> nn.Module:
    return nn.Sequential(model, nn.Softmax(dim=1))


@dataclass
class VibiAttribution:
    """The VIBI (or L2X) explainer's chunk distribution p(z | x), spread evenly over each chunk's
    pixels (and channels, when chunks are shared by the channels). It explains the black box, but
    does not read it: a trained explainer's map does not change when the black box does."""

    name: str
    vibi: nn.Module  # xai.vibi.Vibi
    model: nn.Module  # the black box it was trained to explain

    @torch.inference_mode()
    def attribute(self, inputs: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        spec = self.vibi.spec
        p = self.vibi.chunk_logits(inputs).softmax(1)
        shape, per_channel = tuple(inputs.shape[1:]), spec.xpl_channels > 1
        area = chunk_areas(shape, spec.chunk, per_channel).to(p.device)
        return expand(p / area, shape, spec.chunk, per_channel).contiguous()


@dataclass
class GradientSaliency:
    """|d f_target / d x| (Captum `Saliency`; Simonyan et al., 2014)."""

    model: nn.Module
    name: str = "saliency"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = inputs.detach().clone().requires_grad_(True)
        return Saliency(self.model).attribute(x, target=target, abs=True).detach()


@dataclass
class InputTimesGradient:
    """x * d f_target / d x (Captum `InputXGradient`; Shrikumar et al., 2016)."""

    model: nn.Module
    name: str = "input_x_gradient"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = inputs.detach().clone().requires_grad_(True)
        return InputXGradient(self.model).attribute(x, target=target).detach()


@dataclass
class SmoothGrad:
    """Saliency averaged over noisy copies of the input (Captum `NoiseTunnel`; Smilkov et al.,
    2017). The noise comes from torch's global generator, seeded by the stage."""

    model: nn.Module
    samples: int = 16
    std: float = 0.15
    batch_size: int = 1024
    name: str = "smoothgrad"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = inputs.detach().clone().requires_grad_(True)
        nt = NoiseTunnel(Saliency(self.model))
        return nt.attribute(x, nt_type="smoothgrad", nt_samples=self.samples, stdevs=self.std,
                            nt_samples_batch_size=max(self.batch_size // len(x), 1),
                            target=target, abs=True).detach()


@dataclass
class IntegratedGradientsAttribution:
    """Integrated gradients from the black (all-zero) image (Captum `IntegratedGradients`;
    Sundararajan et al., 2017)."""

    model: nn.Module
    steps: int = 32
    internal_batch_size: int = 2048
    name: str = "integrated_gradients"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ig = IntegratedGradients(self.model)
        return ig.attribute(inputs.clone(), baselines=torch.zeros_like(inputs), target=target,
                            n_steps=self.steps, internal_batch_size=self.internal_batch_size
                            ).detach()


@dataclass
class GradientShapAttribution:
    """Expected gradients against a distribution of reference images (Captum `GradientShap`;
    Lundberg and Lee, 2017): `baselines` are training images, not evaluated ones."""

    model: nn.Module
    baselines: torch.Tensor
    samples: int = 16
    std: float = 0.09
    name: str = "gradient_shap"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = inputs.detach().clone().requires_grad_(True)
        return GradientShap(self.model).attribute(
            x, baselines=self.baselines.to(x.device), n_samples=self.samples, stdevs=self.std,
            target=target).detach()


@dataclass
class Occlusion:
    """The drop of the target logit when one chunk is set to 0, for every chunk (occlusion at the
    chunk size, partial edge chunks included; Zeiler and Fergus, 2014). All images x chunks
    occluded copies go through the model in batches of `batch_size`."""

    model: nn.Module
    chunk: int
    batch_size: int = 1024
    name: str = "occlusion"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shape = tuple(inputs.shape[1:])
        _, rows, cols = chunk_grid(shape, self.chunk)
        d = rows * cols
        dropped = 1 - expand(torch.eye(d, device=inputs.device), shape, self.chunk)  # d x C x H x W
        images = max(1, self.batch_size // d)
        drops = []
        with torch.no_grad():
            for start in range(0, len(inputs), images):
                x, t = inputs[start:start + images], target[start:start + images]
                full = self.model(x).gather(1, t[:, None])
                occluded = self.model((x[:, None] * dropped[None]).flatten(0, 1))
                drops.append(full - occluded.view(len(x), d, -1).gather(
                    2, t[:, None, None].expand(-1, d, 1)).squeeze(2))
        return spread(torch.cat(drops), shape, self.chunk)


@dataclass
class LimeAttribution:
    """LIME over the chunk grid (Captum `Lime`, its default Lasso surrogate and cosine kernel;
    Ribeiro et al., 2016): a sparse linear model of the class probability from which chunks are
    kept, fitted per image on `samples` random subsets."""

    model: nn.Module
    chunk: int
    samples: int = 100
    name: str = "lime"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shape = tuple(inputs.shape[1:])
        ids = chunk_ids(shape, self.chunk, inputs.device)
        with torch.no_grad(), _one_surrogate_per_image():
            a = Lime(_probabilities(self.model)).attribute(
                inputs, baselines=0.0, target=target, feature_mask=ids, n_samples=self.samples,
                perturbations_per_eval=self.samples)
        return spread(_per_chunk(a, self.chunk), shape, self.chunk)


@dataclass
class KernelShapAttribution:
    """KernelSHAP over the chunk grid (Captum `KernelShap`; Lundberg and Lee, 2017): Shapley
    values of the chunks for the class probability, estimated from `samples` subsets per image."""

    model: nn.Module
    chunk: int
    samples: int = 100
    name: str = "kernel_shap"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        shape = tuple(inputs.shape[1:])
        ids = chunk_ids(shape, self.chunk, inputs.device)
        with torch.no_grad(), _one_surrogate_per_image():
            a = KernelShap(_probabilities(self.model)).attribute(
                inputs, baselines=0.0, target=target, feature_mask=ids, n_samples=self.samples,
                perturbations_per_eval=self.samples)
        return spread(_per_chunk(a, self.chunk), shape, self.chunk)


@dataclass
class RandomChunks:
    """Uniformly random chunk scores: the baseline every method must beat. Every call draws
    fresh scores from one generator seeded once, so repeated calls differ (as a random method's
    maps do) while a whole run is reproducible."""

    model: nn.Module
    chunk: int
    seed: int
    name: str = "random"
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        shape = tuple(inputs.shape[1:])
        d = chunk_areas(shape, self.chunk).shape[1]
        scores = torch.rand(len(inputs), d, generator=self.generator)
        return spread(scores.to(inputs.device), shape, self.chunk)


@dataclass
class BoundaryProjection:
    """The invertible classifier's own explanation: |grad (f_c - f_k) * (x - x_p)| with x_p the
    projection onto the boundary with the runner-up class. It explains that classifier."""

    model: nn.Module  # xai.invertible.InvertibleClassifier
    name: str = "boundary_projection"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        from xai.boundary import BoundaryImportance

        return BoundaryImportance(self.model).attribute(inputs, target=target)
