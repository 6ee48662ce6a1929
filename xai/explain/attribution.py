"""Explanation methods behind one call shape, Captum's: `attribute(inputs, target=None) -> map`.

Every method returns an attribution map the size of the input (N x C x H x W) for the class
`target` (one per image, one for all, or None: the explained model's own prediction) of the
model it explains, so the evaluation can reduce any of them to chunk scores and
measure them the same way. The gradient methods are Captum's; the perturbation methods
(occlusion, LIME, KernelSHAP) are batched implementations here (Captum fits one surrogate per image
in a Python loop) and work on the chunk grid of the VIBI explainer (removed chunks set to 0), so
their features are the chunks every method is scored on.
`model` is the model the maps explain; replacing it (`dataclasses.replace`) gives the same method
for another model, which the sanity checks use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from captum import attr as captum
from torch import nn

from xai.chunks import chunk_areas, chunk_grid, expand, spread

#: The classes a map explains: one per image, one for every image, or None (the prediction).
Target = torch.Tensor | int | None


class Attribution(Protocol):
    """An explanation method: all the evaluation (`xai.evaluate`) needs of one. Those that are
    dataclasses with a `model` field (this module's) are also re-run on randomised copies of
    their model (the sanity checks)."""

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        """A map the size of `inputs` for the classes `target`."""


def explained_classes(model: nn.Module, inputs: torch.Tensor, target: Target) -> torch.Tensor:
    """`target` as one class index per image; None means the model's own prediction."""
    if target is None:
        with torch.no_grad():
            return model(inputs).argmax(1)
    if isinstance(target, int):
        return torch.full((len(inputs),), target, dtype=torch.long, device=inputs.device)
    return target


@dataclass
class ExplainerDistribution:
    """The VIBI (or L2X) explainer's chunk distribution p(z | x), spread evenly over each chunk's
    pixels (and channels, when chunks are shared by the channels). It explains the black box, but
    does not read it: a trained explainer's map does not change when the black box does."""

    name: str
    vibi: nn.Module  # xai.models.vibi.VibiModel
    model: nn.Module  # the black box it was trained to explain

    @torch.inference_mode()
    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        spec = self.vibi.spec
        p = self.vibi.chunk_logits(inputs).softmax(1)
        shape, per_channel = tuple(inputs.shape[1:]), spec.xpl_channels > 1
        area = chunk_areas(shape, spec.chunk, per_channel).to(p.device)
        return expand(p / area, shape, spec.chunk, per_channel).contiguous()


@dataclass
class GradientSaliency:
    """|d f_target / d x| (Captum `Saliency`; Simonyan et al., 2014).

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4)
    >>> saliency = xai.GradientSaliency(model).attribute(x, target=1)
    >>> saliency.shape
    torch.Size([2, 1, 4, 4])
    >>> torch.allclose(saliency, model[1].weight[1].abs().view(1, 1, 4, 4).expand(2, -1, -1, -1))
    True
    """

    model: nn.Module
    name: str = "saliency"

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        target = explained_classes(self.model, inputs, target)
        x = inputs.detach().clone().requires_grad_(True)
        return captum.Saliency(self.model).attribute(x, target=target, abs=True).detach()


@dataclass
class InputTimesGradient:
    """x * d f_target / d x (Captum `InputXGradient`; Shrikumar et al., 2016).

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4)
    >>> attribution = xai.InputTimesGradient(model).attribute(x, target=torch.tensor([0, 2]))
    >>> attribution.shape
    torch.Size([2, 1, 4, 4])
    >>> w = model[1].weight.view(3, 1, 4, 4)
    >>> torch.allclose(attribution, x * w[[0, 2]])
    True
    """

    model: nn.Module
    name: str = "input_x_gradient"

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        target = explained_classes(self.model, inputs, target)
        x = inputs.detach().clone().requires_grad_(True)
        return captum.InputXGradient(self.model).attribute(x, target=target).detach()


@dataclass
class SmoothGrad:
    """Saliency averaged over noisy copies of the input (Captum `NoiseTunnel`; Smilkov et al.,
    2017). The noise comes from torch's global generator, seeded by the stage.

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4)
    >>> smooth = xai.SmoothGrad(model, samples=4).attribute(x, target=1)
    >>> smooth.shape
    torch.Size([2, 1, 4, 4])
    >>> saliency = xai.GradientSaliency(model).attribute(x, target=1)
    >>> torch.allclose(smooth, saliency)  # a linear model's gradient is the same everywhere
    True
    """

    model: nn.Module
    samples: int = 16
    std: float = 0.15
    batch_size: int = 1024
    name: str = "smoothgrad"

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        target = explained_classes(self.model, inputs, target)
        x = inputs.detach().clone().requires_grad_(True)
        nt = captum.NoiseTunnel(captum.Saliency(self.model))
        return nt.attribute(x, nt_type="smoothgrad", nt_samples=self.samples, stdevs=self.std,
                            nt_samples_batch_size=max(self.batch_size // len(x), 1),
                            target=target, abs=True).detach()


@dataclass
class IntegratedGradients:
    """Integrated gradients from the black (all-zero) image (Captum `IntegratedGradients`;
    Sundararajan et al., 2017).

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4)
    >>> ig = xai.IntegratedGradients(model, steps=8).attribute(x, target=1)
    >>> ig.shape
    torch.Size([2, 1, 4, 4])
    >>> with torch.no_grad():  # completeness: the map adds up to f(x) - f(0)
    ...     gain = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    >>> torch.allclose(ig.sum(dim=(1, 2, 3)), gain, atol=1e-5)
    True
    """

    model: nn.Module
    steps: int = 32
    internal_batch_size: int = 256
    name: str = "integrated_gradients"

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        target = explained_classes(self.model, inputs, target)
        ig = captum.IntegratedGradients(self.model)
        return ig.attribute(inputs.clone(), baselines=torch.zeros_like(inputs), target=target,
                            n_steps=self.steps, internal_batch_size=self.internal_batch_size
                            ).detach()


@dataclass
class GradientShap:
    """Expected gradients against a distribution of reference images (Captum `GradientShap`;
    Lundberg and Lee, 2017): `baselines` are training images, not evaluated ones.

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x, reference = torch.rand(2, 1, 4, 4), torch.rand(1, 1, 4, 4)
    >>> method = xai.GradientShap(model, baselines=reference, samples=8, std=0.0)
    >>> shap = method.attribute(x, target=1)
    >>> shap.shape
    torch.Size([2, 1, 4, 4])
    >>> with torch.no_grad():  # one reference and no noise: the map adds up to f(x) - f(reference)
    ...     gain = model(x)[:, 1] - model(reference)[:, 1]
    >>> torch.allclose(shap.sum(dim=(1, 2, 3)), gain, atol=1e-5)
    True
    """

    model: nn.Module
    baselines: torch.Tensor
    samples: int = 16
    std: float = 0.09
    name: str = "gradient_shap"

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        target = explained_classes(self.model, inputs, target)
        x = inputs.detach().clone().requires_grad_(True)
        return captum.GradientShap(self.model).attribute(
            x, baselines=self.baselines.to(x.device), n_samples=self.samples, stdevs=self.std,
            target=target).detach()


def occlusion_windows(rows: int, cols: int, window: int, stride: int) -> torch.Tensor:
    """P x (rows * cols) membership of the square windows of `window` x `window` chunks that
    slide over the chunk grid by `stride` chunks; the last row and column of windows sit on the
    grid's edge, so every chunk is in at least one window (stride <= window)."""
    def starts(size: int) -> list[int]:
        w = min(window, size)
        return sorted(set(range(0, size - w + 1, stride)) | {size - w})

    rows_in = [torch.zeros(rows).index_fill_(0, torch.arange(r, min(r + window, rows)), 1)
               for r in starts(rows)]
    cols_in = [torch.zeros(cols).index_fill_(0, torch.arange(c, min(c + window, cols)), 1)
               for c in starts(cols)]
    return torch.stack([torch.outer(r, c).flatten() for r in rows_in for c in cols_in])


@dataclass
class Occlusion:
    """The drop of the target logit when a window of chunks is set to 0 (Zeiler and Fergus,
    2014), sliding over the chunk grid as Captum's occlusion does: each chunk's score is the mean
    drop of the windows that cover it. `window` = `stride` = 1 (the default) occludes one chunk at
    a time, partial edge chunks included; larger windows take fewer passes (one per window) and
    credit evidence that a single chunk's removal leaves to its neighbours. All images x windows
    occluded copies go through the model in batches of `batch_size`.

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4)
    >>> drops = xai.Occlusion(model, chunk=2).attribute(x, target=1)  # four 2 x 2 chunks
    >>> drops.shape
    torch.Size([2, 1, 4, 4])
    >>> with torch.no_grad():  # a linear model's drops add up to f(x) - f(0)
    ...     gain = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    >>> torch.allclose(drops.sum(dim=(1, 2, 3)), gain, atol=1e-5)
    True
    """

    model: nn.Module
    chunk: int
    batch_size: int = 1024
    window: int = 1  # side of the occluded square, in chunks
    stride: int = 1  # its step, in chunks (at most `window`)
    name: str = "occlusion"

    def __post_init__(self) -> None:
        if not 1 <= self.stride <= self.window:
            raise ValueError(f"Occlusion stride {self.stride} is out of range; allowed: 1 to the "
                             f"window ({self.window}), or some chunks are never occluded")

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        target = explained_classes(self.model, inputs, target)
        shape = tuple(inputs.shape[1:])
        _, rows, cols = chunk_grid(shape, self.chunk)
        windows = occlusion_windows(rows, cols, self.window, self.stride).to(inputs.device)
        p = len(windows)
        dropped = 1 - expand(windows, shape, self.chunk)  # P x C x H x W
        images = max(1, self.batch_size // p)
        drops = []
        with torch.no_grad():
            for start in range(0, len(inputs), images):
                x, t = inputs[start:start + images], target[start:start + images]
                full = self.model(x).gather(1, t[:, None])
                occluded = self.model((x[:, None] * dropped[None]).flatten(0, 1))
                drops.append(full - occluded.view(len(x), p, -1).gather(
                    2, t[:, None, None].expand(-1, p, 1)).squeeze(2))
        scores = torch.cat(drops).float() @ windows / windows.sum(0)  # mean over covering windows
        return spread(scores, shape, self.chunk)


def _surrogate_coefficients(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                            chunk: int, coalitions: torch.Tensor, weights: torch.Tensor,
                            ridge: float, batch_size: int) -> torch.Tensor:
    """Per image, the weighted ridge regression of the target-class probability on which chunks
    are kept: `coalitions` (B x S x d, 1 = kept, the rest 0-filled), `weights` (B x S). All B x S
    masked copies go through `model` in batches; the B small systems are solved at once.
    Returns B x d coefficients (the intercept is fitted, not returned)."""
    b, s, d = coalitions.shape
    shape = tuple(inputs.shape[1:])
    pixel = expand(coalitions.flatten(0, 1), shape, chunk).view(b, s, *shape)
    probs = []
    images = max(1, batch_size // s)
    with torch.no_grad():
        for start in range(0, b, images):
            x, t = inputs[start:start + images], target[start:start + images]
            out = model((x[:, None] * pixel[start:start + images]).flatten(0, 1)).float()
            p = out.softmax(1).view(len(x), s, -1)
            probs.append(p.gather(2, t[:, None, None].expand(-1, s, 1)).squeeze(2))
    y = torch.cat(probs)  # B x S
    # float64: with fewer subsets than chunks (pixel chunks) only the ridge keeps the system
    # definite, and a small ridge next to the large constraint weights is lost in float32
    design = torch.cat([coalitions.double(), torch.ones(b, s, 1, dtype=torch.float64,
                                                        device=inputs.device)], 2)
    weighted = design * weights.double()[..., None]
    gram = weighted.transpose(1, 2) @ design
    penalty = torch.full((d + 1,), ridge, dtype=torch.float64, device=inputs.device)
    penalty[-1] = 0.0  # the intercept is not shrunk
    gram = gram + torch.diag(penalty)
    solution = torch.linalg.solve(gram, weighted.transpose(1, 2) @ y.double()[..., None])
    return solution[:, :d, 0].float()


@dataclass
class _ChunkSurrogate:
    """A local surrogate over the chunk grid: per image, `samples` chunk subsets (the rest set to
    0), weighted, and a ridge fit of the class probability on which chunks are kept; its
    coefficients are the chunks' scores. Subclasses say how subsets are drawn and weighted."""

    model: nn.Module
    chunk: int
    samples: int = 100
    seed: int = 0
    ridge: float = 1e-2
    batch_size: int = 4096
    name: str = "surrogate"
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def coalitions(self, n: int, d: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(kept: n x S x d booleans, weights: n x S) for `n` images of `d` chunks."""
        raise NotImplementedError

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        target = explained_classes(self.model, inputs, target)
        shape = tuple(inputs.shape[1:])
        d = chunk_areas(shape, self.chunk).shape[1]
        kept, weights = self.coalitions(len(inputs), d, inputs.device)
        coefficients = _surrogate_coefficients(self.model, inputs, target, self.chunk, kept,
                                               weights, self.ridge, self.batch_size)
        return spread(coefficients, shape, self.chunk)


@dataclass
class Lime(_ChunkSurrogate):
    """LIME over the chunk grid (Ribeiro et al., 2016), batched: per image, `samples` random chunk
    subsets (each chunk kept with probability 1/2, the rest 0), weighted by LIME's exponential
    kernel on their cosine distance to the whole image (width 0.25), and a ridge surrogate of the
    class probability (where Captum's default is a Lasso: ridge solves every image at once).

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4)
    >>> lime = xai.Lime(model, chunk=2, samples=32).attribute(x)  # the predicted classes
    >>> lime.shape
    torch.Size([2, 1, 4, 4])
    >>> torch.equal(lime, xai.Lime(model, chunk=2, samples=32).attribute(x))  # seeded
    True
    >>> bool((lime[:, :, :2, :2] == lime[:, :, :1, :1]).all())  # one value per chunk
    True
    """

    ridge: float = 1e-2
    name: str = "lime"

    def coalitions(self, n: int, d: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        kept = torch.rand(n, self.samples, d, generator=self.generator) < 0.5
        kept = kept.to(device)
        distance = 1 - (kept.sum(2).float() / d).sqrt()  # cosine distance to the all-kept mask
        return kept, torch.exp(-distance.square() / 0.25 ** 2)


@dataclass
class KernelShap(_ChunkSurrogate):
    """KernelSHAP over the chunk grid (Lundberg and Lee, 2017), batched: per image, `samples`
    chunk subsets whose sizes follow the Shapley kernel (size s with probability proportional to
    (d - 1) / (s (d - s))), plus the empty and the full set with a large weight so that the
    values add up to f(x) - f(0); the least-squares fit of the class probability gives the
    chunks' Shapley values.

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4)
    >>> shap = xai.KernelShap(model, chunk=2, samples=32).attribute(x, target=1)
    >>> shap.shape
    torch.Size([2, 1, 4, 4])
    >>> with torch.no_grad():  # efficiency: the values add up to p(x) - p(0) of the class
    ...     gain = model(x).softmax(1)[:, 1] - model(torch.zeros_like(x)).softmax(1)[:, 1]
    >>> torch.allclose(shap.sum(dim=(1, 2, 3)), gain, atol=1e-3)
    True
    """

    ridge: float = 1e-4  # keeps the fit defined with fewer subsets than chunks
    name: str = "kernel_shap"

    def coalitions(self, n: int, d: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        sizes_allowed = torch.arange(1, d, dtype=torch.float64)
        kernel = (d - 1) / (sizes_allowed * (d - sizes_allowed))
        sizes = 1 + torch.multinomial(kernel, n * self.samples, replacement=True,
                                      generator=self.generator).view(n, self.samples, 1)
        order = torch.rand(n, self.samples, d, generator=self.generator).argsort(2).argsort(2)
        kept = torch.cat([order < sizes, torch.zeros(n, 1, d, dtype=torch.bool),
                          torch.ones(n, 1, d, dtype=torch.bool)], 1).to(device)
        weights = torch.ones(n, self.samples + 2, device=device)
        weights[:, -2:] = 1e4  # the efficiency constraint, softly
        return kept, weights


@dataclass
class RandomChunks:
    """Uniformly random chunk scores: the baseline every method must beat. Every call draws
    fresh scores from one generator seeded once, so repeated calls differ (as a random method's
    maps do) while a whole run is reproducible.

    >>> import torch, xai
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> x = torch.rand(2, 1, 4, 4)
    >>> random = xai.RandomChunks(model, chunk=2, seed=0)
    >>> first, second = random.attribute(x), random.attribute(x)
    >>> first.shape
    torch.Size([2, 1, 4, 4])
    >>> torch.equal(first, second)  # fresh scores on every call
    False
    >>> torch.equal(first, xai.RandomChunks(model, chunk=2, seed=0).attribute(x))  # seeded
    True
    """

    model: nn.Module
    chunk: int
    seed: int
    name: str = "random"
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed)

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:
        shape = tuple(inputs.shape[1:])
        d = chunk_areas(shape, self.chunk).shape[1]
        scores = torch.rand(len(inputs), d, generator=self.generator)
        return spread(scores.to(inputs.device), shape, self.chunk)
