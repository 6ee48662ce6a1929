"""VIBI: an explainer picks k of d chunks, an approximator predicts the black box from them alone.

Objective (Bang et al.): maximise I(y; t) - beta * I(x; t) with t = x * z and z a k-hot mask over
the d chunks. In practice:

- the explainer gives d logits; p(z | x) = softmax(logits);
- training: a relaxed k-hot sample (k Gumbel-softmax draws over the d chunks at temperature tau,
  element-wise max), `num_samples` per input; test: the hard top-k mask of the logits;
- loss = H(p, q) + beta * KL(p(z | x) || uniform(d)), where H is the soft cross-entropy between the
  black box's class probabilities p(y | x) and the approximator's q(y | t), summed over classes
  and averaged over samples and batch. beta = 0 is L2X.

Gumbel noise is added to the logits (log-probabilities up to a constant), never to the
probabilities; the KL runs from p(z | x) to the uniform prior, not the reverse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn

from xai.chunks import chunk_grid, chunks_to_pixels
from xai.data.imputation import smooth_fill
from xai.devices import CONV_LAYOUT
from xai.errors import CheckpointError
from xai.io import SavedFields, load_torch, save_torch
from xai.models.approximator import Approximator
from xai.models.explainers import CHUNK_SIZE, build_explainer
from xai.tensors import autocast, state_dict_cpu, to_unit

KIND = "xai.vibi"
Fill = Literal["zero", "smooth"]  # what the predictor sees in the removed pixels (`VibiModel.masked`)
FILLS = get_args(Fill)


# ----------------------------------------------------------------------------- the math


def _gumbel(logits: torch.Tensor, k: int, num_samples: int, generator: torch.Generator | None,
            shard: tuple[int, int, int] | None) -> torch.Tensor:
    """Standard Gumbel noise, B x S x k x d for `logits` B x d (rows rank::world of the whole
    batch's noise under `shard`), built in place: it is the largest tensor of a training step."""
    b, d = logits.shape
    rows = b if shard is None else shard[0]
    u = torch.rand((rows, num_samples, k, d), generator=generator, device=logits.device)
    if shard is not None:
        u = u[shard[1]::shard[2]]
    tiny = torch.finfo(u.dtype).tiny
    return u.clamp_(min=tiny, max=1.0 - 1e-7).log_().neg_().log_().neg_()


def gumbel_softmax_draws(logits: torch.Tensor, k: int, tau: float, num_samples: int = 1,
                         generator: torch.Generator | None = None,
                         shard: tuple[int, int, int] | None = None) -> torch.Tensor:
    """`num_samples` x `k` relaxed one-hot draws per row of `logits` (B x d) -> B x S x k x d.

    Each draw is softmax((logits + Gumbel noise) / tau): a point of the simplex (it sums to 1) that
    tends to a one-hot sample of softmax(logits) as tau -> 0. `shard = (global rows, rank, world)`
    says `logits` are rows rank::world of a larger batch: the noise of the whole batch is drawn
    and this shard's rows kept, so sharded training sees the noise one process would.
    """
    noise = _gumbel(logits, k, num_samples, generator, shard)
    return noise.add_(logits.float()[:, None, None, :]).div_(tau).softmax(dim=-1)


class _MaxOfDraws(torch.autograd.Function):
    """The element-wise max over the k draws of `gumbel_softmax_draws`, differentiated by hand.

    Each chunk's mask value comes from one draw j*, so with G the incoming gradient and y the draws,
    d loss / d logits_m = (G_m mask_m - sum_j c_j y_jm) / tau with c_j = sum of G_i mask_i over the
    chunks i whose max is in draw j. The backward reads the saved draws once; autograd's amax and
    softmax backward made several B x S x k x d temporaries, half of a CIFAR-10 step's time."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            draws = noise.add_(logits[:, None, None, :]).div_(tau).softmax(dim=-1)
            mask, pick = draws.max(dim=2)
        ctx.save_for_backward(draws, mask, pick)
        ctx.tau = tau
        return mask

    @staticmethod
    def backward(ctx: Any, grad_mask: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        draws, mask, pick = ctx.saved_tensors
        with torch.autocast(grad_mask.device.type, enabled=False):
            weighted = grad_mask.float() * mask  # B x S x d
            per_draw = torch.zeros(draws.shape[:3], dtype=weighted.dtype, device=weighted.device)
            per_draw.scatter_add_(2, pick, weighted)  # B x S x k
            spread = torch.matmul(per_draw.unsqueeze(2), draws).squeeze(2)  # B x S x d
            return (weighted - spread).sum(1) / ctx.tau, None, None


def relaxed_k_hot(logits: torch.Tensor, k: int, tau: float, num_samples: int = 1,
                  generator: torch.Generator | None = None,
                  shard: tuple[int, int, int] | None = None,
                  straight_through: bool = False) -> torch.Tensor:
    """Relaxed k-hot masks (B x S x d): the element-wise max of k Gumbel-softmax draws.

    Every entry is in [0, 1], a mask sums to between 1 and k, and at most k entries exceed 1/2
    (each draw has at most one), so it tends to a mask with at most k chunks on as tau -> 0.
    `straight_through`: the forward value is the exact k-hot mask of the k largest entries (what
    the test-time mask looks like: no faint extra chunks), the gradient the relaxed mask's.
    """
    soft = _MaxOfDraws.apply(logits.float(), _gumbel(logits, k, num_samples, generator, shard),
                             tau)
    if not straight_through:
        return soft
    hard = torch.zeros_like(soft).scatter_(-1, soft.topk(k, dim=-1).indices, 1.0)
    return hard + soft - soft.detach()


def hard_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The test-time mask (B x d, float): 1 at the k largest logits of each row, else 0."""
    index = logits.topk(k, dim=-1).indices
    return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, index, 1.0)


# ----------------------------------------------------------------------------- the model pair


@dataclass(frozen=True)
class VibiSpec(SavedFields):
    """Everything needed to rebuild an explainer/approximator pair."""

    explainer_type: str
    xpl_channels: int
    width_multiplier: float  # of the explainer's and the approximator's channels
    in_channels: int
    height: int
    width_px: int
    num_classes: int
    k: int
    fill: Fill = "zero"  # removed pixels: 0 | smooth (`xai.data.imputation.smooth_fill`)

    #: Field names as saved files spell them (older name, kept so saved models stay byte-identical).
    SAVED_NAMES: ClassVar[dict[str, str]] = {"width_multiplier": "width"}
    LATER_FIELDS: ClassVar[tuple[str, ...]] = ("fill",)

    @property
    def chunk(self) -> int:
        return CHUNK_SIZE[self.explainer_type]

    @property
    def grid(self) -> tuple[int, int]:
        return chunk_grid((self.xpl_channels, self.height, self.width_px), self.chunk, True)[1:]

    @property
    def num_chunks(self) -> int:
        h, w = self.grid
        return self.xpl_channels * h * w


class VibiModel(nn.Module):
    """The explainer and the approximator, with the masking that connects them."""

    def __init__(self, spec: VibiSpec) -> None:
        super().__init__()
        if spec.fill not in FILLS:
            raise ValueError(f"fill {spec.fill!r} is not one of {FILLS}")
        self.spec = spec
        self.explainer = build_explainer(spec.explainer_type, spec.in_channels,
                                         spec.xpl_channels, spec.width_multiplier)
        self.approximator = Approximator(spec.in_channels, spec.num_classes, spec.height,
                                         spec.width_px, spec.width_multiplier)

    def chunk_logits(self, x: torch.Tensor) -> torch.Tensor:
        """B x d logits of p(z | x), d = xpl_channels * rows * columns (float32)."""
        return self.explainer(x).flatten(1).float()

    def pixel_mask(self, chunk_mask: torch.Tensor) -> torch.Tensor:
        """Chunk masks (... x d) -> pixel masks (... x xpl_channels x H x W), nearest up-sampling."""
        s = self.spec
        return chunks_to_pixels(chunk_mask, (s.xpl_channels, *s.grid), s.chunk,
                                (s.height, s.width_px))

    def masked(self, x: torch.Tensor, chunk_mask: torch.Tensor) -> torch.Tensor:
        """Inputs with only their masks' chunks kept, the rest filled as `spec.fill` says (0, or
        smoothly from the kept pixels): x (B x C x H x W), masks B x d or B x S x d -> (B*S) x C x
        H x W."""
        mask = self.pixel_mask(chunk_mask.to(x.dtype))
        if mask.dim() == 5:  # S samples per input
            x = x[:, None].expand(-1, mask.shape[1], -1, -1, -1).flatten(0, 1)
            mask = mask.flatten(0, 1)
        if self.spec.fill == "smooth":
            return smooth_fill(x, mask)
        return x * mask

    def forward(self, x: torch.Tensor, tau: float, num_samples: int,
                generator: torch.Generator | None = None,
                shard: tuple[int, int, int] | None = None,
                straight_through: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (chunk logits B x d, approximator logits B x S x K on relaxed masks);
        `shard` and `straight_through` as in `gumbel_softmax_draws` and `relaxed_k_hot`."""
        logits = self.chunk_logits(x)
        mask = relaxed_k_hot(logits, self.spec.k, tau, num_samples, generator, shard,
                             straight_through)
        approx = self.approximator(self.masked(x, mask))
        return logits, approx.float().reshape(x.shape[0], num_samples, -1)

    def explain(self, x: torch.Tensor, approximator: nn.Module | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Test pass: (chunk logits B x d, hard top-k masks B x d, approximator logits B x K);
        `approximator` replaces the pair's own (e.g. the black box it was trained against)."""
        logits = self.chunk_logits(x)
        mask = hard_top_k(logits, self.spec.k)
        predictor = self.approximator if approximator is None else approximator
        return logits, mask, predictor(self.masked(x, mask)).float()


class ExplainedPrediction(nn.Module):
    """The black box and its VIBI explainer as one module, what a server runs per request: images
    N x C x H x W (floats in [0, 1]) -> (the black box's class N, its probabilities N x K, the k
    chunks the explainer keeps N x k (most probable first), their pixel mask N x C x H x W (bool),
    p(z | x) on the chunk grid N x xpl_channels x rows x columns). The mask is `VIBI.top_k`'s;
    `VIBI.attribute` is p(z | x) spread evenly over each chunk's pixels."""

    def __init__(self, vibi: VibiModel, blackbox: nn.Module) -> None:
        super().__init__()
        self.vibi, self.blackbox = vibi, blackbox

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        probs = self.blackbox(x).float().softmax(1)
        logits = self.vibi.chunk_logits(x)
        chunks = logits.topk(self.vibi.spec.k, dim=-1).indices
        mask = self.vibi.pixel_mask(hard_top_k(logits, self.vibi.spec.k))
        grid = (self.vibi.spec.xpl_channels, *self.vibi.spec.grid)
        return (probs.argmax(1), probs, chunks, mask.expand(-1, x.shape[1], -1, -1).bool(),
                logits.softmax(1).reshape(-1, *grid))


def save_vibi(model: VibiModel, path: str | Path, **extra: Any) -> None:
    """Write the pair as {"kind", "spec", "state_dict", ...extra}: loadable with weights_only."""
    save_torch({"kind": KIND, "spec": model.spec.to_state(), "state_dict": state_dict_cpu(model),
                **extra}, path)


def vibi_from_state(obj: dict[str, Any], path: str | Path = "<memory>") -> VibiModel:
    """Rebuild a pair from a loaded `save_vibi` file (or a checkpoint holding the same keys)."""
    try:
        model = VibiModel(VibiSpec.from_state(obj["spec"]))
        model.load_state_dict(obj["state_dict"])
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path} does not hold a VIBI model this code can rebuild ({first})"
                              ) from None
    return model


def load_vibi(path: str | Path, device: torch.device | str = "cpu") -> VibiModel:
    """Load a pair written by `save_vibi` (weights_only=True), in eval mode, on `device`."""
    obj = load_torch(path, kind=KIND, required=("spec", "state_dict"))
    return vibi_from_state(obj, path).to(device).eval()


@dataclass(frozen=True)
class Explanations:
    """Per-input results on one split: chunk distributions, top-k masks, approximator output."""

    chunk_probs: torch.Tensor       # N x d, p(z | x)
    top_k: torch.Tensor             # N x d, bool, the k chunks kept
    approx_probs: torch.Tensor      # N x K, q(y | top-k masked x)
    kl: torch.Tensor                # N, KL(p(z | x) || uniform)
    posthoc_probs: torch.Tensor | None  # N x K, the black box on the masked input


@torch.inference_mode()
def explain_split(model: VibiModel, x: torch.Tensor, blackbox: Callable[[torch.Tensor], torch.Tensor] | None
            = None, batch_size: int = 1000, amp: bool = False,
            approximator: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Explanations:
    """Run the explainer (hard top-k) and approximator, optionally the black box, on all of `x`.
    `approximator` replaces the pair's own (the `blackbox` objective's frozen black box)."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("p", "m", "q", "kl", "bb")}
    for i in range(0, len(x), batch_size):
        xb = to_unit(x[i:i + batch_size]).contiguous(memory_format=CONV_LAYOUT)
        with autocast(xb.device, amp):
            logits, mask, approx = model.explain(xb, approximator)
            if blackbox is not None:
                parts["bb"].append(blackbox(model.masked(xb, mask)).float().softmax(-1))
        parts["p"].append(logits.softmax(-1))
        parts["m"].append(mask.bool())
        parts["q"].append(approx.softmax(-1))
        parts["kl"].append(kl_to_uniform(logits))
    model.train(was_training)
    cat = {k: torch.cat(v) if v else None for k, v in parts.items()}
    return Explanations(cat["p"], cat["m"], cat["q"], cat["kl"], cat["bb"])


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits) || uniform(d)) = sum_j p_j log p_j + log d, per row (0 <= KL <= log d)."""
    log_p = logits.float().log_softmax(dim=-1)
    plogp = torch.where(log_p > -math.inf, log_p.exp() * log_p, torch.zeros_like(log_p))
    return plogp.sum(dim=-1) + math.log(logits.shape[-1])
