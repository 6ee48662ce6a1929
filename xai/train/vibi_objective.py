"""VIBI's training objective: `H(p, q) + beta * KL(p(z | x) || uniform(d))` (beta = 0 is L2X), as
functions and as one module (`TrainingObjective`) that DistributedDataParallel can wrap.

H is the soft cross-entropy between the black box's class probabilities p(y | x) and the
approximator's q(y | t), summed over classes and averaged over samples and batch; the KL runs from
p(z | x) to the uniform prior, not the reverse.
"""

from __future__ import annotations

import torch
from torch import nn

from xai.models.vibi import VibiModel, kl_to_uniform, relaxed_k_hot


def soft_cross_entropy(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """H(p, q) summed over classes and averaged over every other axis.

    `target_probs` is B x K; `logits` is B x K or B x S x K (S samples of the same input).
    """
    log_q = logits.float().log_softmax(dim=-1)
    if log_q.dim() == 3:
        target_probs = target_probs[:, None, :]
    return -(target_probs * log_q).sum(dim=-1).mean()


def vibi_loss(target_probs: torch.Tensor, approx_logits: torch.Tensor,
              explainer_logits: torch.Tensor, beta: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, cross-entropy, mean KL): loss = H(p, q) + beta * KL(p(z|x) || uniform)."""
    ce = soft_cross_entropy(target_probs, approx_logits)
    kl = kl_to_uniform(explainer_logits).mean()
    return ce + beta * kl, ce, kl


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats, in [0, log 2]) between rows of two probability tables."""
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor) -> torch.Tensor:
        return torch.where(a > 0, a * (a.clamp_min(1e-30).log() - m.clamp_min(1e-30).log()),
                           torch.zeros_like(a)).sum(dim=-1)

    return 0.5 * (kl(p) + kl(q))


class TrainingObjective(nn.Module):
    """One training step's loss as a module, so DistributedDataParallel can wrap the whole step
    (warm-up steps use only the approximator, so the explainer may sit out).

    Who predicts the black box from the kept chunks (`objective`):
    - `published`: the pair's approximator, trained with the explainer (VIBI, L2X);
    - `blackbox`: the frozen black box itself, so the explainer maximises the black box's own
      likelihood of its prediction on the kept chunks; no approximator to decode positions;
    - `realx`: the approximator, first trained alone on random chunk subsets (REAL-X, Jethani et
      al., 2021) and then frozen, so it cannot learn to read the explainer's positions.
    """

    def __init__(self, model: VibiModel, beta: float, num_samples: int, objective: str = "published",
                 blackbox: nn.Module | None = None, straight_through: bool = False) -> None:
        super().__init__()
        self.straight_through = straight_through
        self.model = model
        self.beta = beta
        self.num_samples = num_samples
        self.objective = objective
        self.blackbox = [blackbox]  # a list: not a submodule, so DDP and state_dict leave it out

    def forward(self, x: torch.Tensor, p: torch.Tensor, tau: float, warm: bool,
                noise: torch.Generator, shard: tuple[int, int, int] | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, soft cross-entropy, KL) of the batch `x` against black-box probabilities `p`."""
        if warm:  # the approximator alone: on unmasked inputs, or (REAL-X) on random subsets
            if self.objective == "realx":
                d = self.model.spec.num_chunks
                keep = torch.rand(x.shape[0], d, generator=noise, device=x.device).argsort(1) \
                    .argsort(1) < torch.randint(0, d + 1, (x.shape[0], 1), generator=noise,
                                                device=x.device)
                x = self.model.masked(x, keep.float())
            ce = soft_cross_entropy(p, self.model.approximator(x))
            return ce, ce, torch.zeros((), device=x.device)
        if self.objective == "blackbox":
            logits = self.model.chunk_logits(x)
            mask = relaxed_k_hot(logits, self.model.spec.k, tau, self.num_samples, noise, shard,
                                 self.straight_through)
            approx = self.blackbox[0](self.model.masked(x, mask)).float()
            approx = approx.reshape(x.shape[0], self.num_samples, -1)
        else:
            logits, approx = self.model(x, tau, self.num_samples, noise, shard,
                                        self.straight_through)
        return vibi_loss(p, approx, logits, self.beta)
