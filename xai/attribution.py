"""Explanation methods behind one call shape, Captum's: `attribute(inputs, target) -> map`.

Every method returns an attribution map the size of the input (N x C x H x W) for the class
`target` of the model it explains, so the evaluation can reduce any of them to chunk scores and
measure them the same way. Gradient saliency and integrated gradients are Captum's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from captum.attr import IntegratedGradients, Saliency
from torch import nn

from xai.measures import chunk_areas, expand


class Attribution(Protocol):
    """What the evaluation needs of a method."""

    name: str
    model: nn.Module  # the model whose decisions the attributions explain

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


@dataclass
class VibiAttribution:
    """The VIBI (or L2X) explainer's chunk distribution p(z | x), spread evenly over each chunk's
    pixels (and channels, when chunks are shared by the channels). It explains the black box."""

    name: str
    vibi: nn.Module  # xai.vibi.Vibi
    model: nn.Module  # the black box it was trained to explain

    @torch.inference_mode()
    def attribute(self, inputs: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        spec = self.vibi.spec
        p = self.vibi.chunk_logits(inputs).softmax(1)
        shape, per_channel = tuple(inputs.shape[1:]), spec.xpl_channels > 1
        area = chunk_areas(shape, spec.chunk, per_channel).to(p.device)
        return expand(p / area, shape, spec.chunk, per_channel)


@dataclass
class GradientSaliency:
    """|d f_target / d x| (Captum `Saliency`)."""

    model: nn.Module
    name: str = "saliency"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = inputs.detach().clone().requires_grad_(True)
        return Saliency(self.model).attribute(x, target=target, abs=True).detach()


@dataclass
class IntegratedGradientsAttribution:
    """Integrated gradients from the black (all-zero) image (Captum `IntegratedGradients`)."""

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
class RandomChunks:
    """Uniformly random chunk scores: the baseline every method must beat."""

    model: nn.Module
    chunk: int
    seed: int
    name: str = "random"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        shape = tuple(inputs.shape[1:])
        area = chunk_areas(shape, self.chunk)
        g = torch.Generator().manual_seed(self.seed)
        scores = torch.rand(len(inputs), area.shape[1], generator=g)
        return expand((scores / area).to(inputs.device), shape, self.chunk)


@dataclass
class BoundaryProjection:
    """The invertible classifier's own explanation: |grad (f_c - f_k) * (x - x_p)| with x_p the
    projection onto the boundary with the runner-up class. It explains that classifier."""

    model: nn.Module  # xai.invertible.InvertibleClassifier
    name: str = "boundary_projection"

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        from xai.boundary import BoundaryImportance

        return BoundaryImportance(self.model).attribute(inputs, target=target)
