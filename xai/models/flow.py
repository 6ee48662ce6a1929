"""The layers of an invertible feature map `T`: each a bijection with an exact, batched `inverse`
and a `transform` that also returns `log|det dy/dx|` per sample (a normalising flow's contract).

Additive coupling (NICE / memcnn, log-det 0), space-to-depth down-sampling ("psi" in i-RevNet),
a logit transform of pixels, ActNorm, invertible 1x1 convolutions, fixed permutations, affine
couplings (Glow), `Partial` (a bijection on some channels only) and `InvertibleNet`, the layers in
order. The contract every layer keeps: `inverse(forward(x)) == x` up to float error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Logit transform of the image net: pixels in [0, 1] become logit(alpha + (1 - 2 alpha) x).
LOGIT_ALPHA = 0.05


#: ... and continued linearly where |logit| > LOGIT_TAIL (see `Logit`).
LOGIT_TAIL = 4.0


#: Affine couplings scale by at most exp(SCALE_BOUND) and at least exp(-SCALE_BOUND).
SCALE_BOUND = 2.0


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(dim=1)


class Bijection(nn.Module):
    """A layer of `T`: `forward`, `inverse`, and `transform` (forward and its log-determinant).

    The default `transform` is that of a volume-preserving layer (log-det 0)."""

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x), x.new_zeros(len(x))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Coupling(Bijection):
    """Additive coupling over the halves of dim 1: `y1 = x1 + F(x2)`, then `y2 = x2 + G(y1)`.

    `F` and `G` are arbitrary networks mapping a half to a half; the block is invertible whatever
    they are, and its inverse `x2 = y2 - G(y1)`, `x1 = y1 - F(x2)` is exact up to float rounding.
    Its Jacobian is a product of unit-triangular ones: log-det 0.
    """

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        self.f = f
        self.g = g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        y1 = x1 + self.f(x2)
        return torch.cat([y1, x2 + self.g(y1)], dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y.chunk(2, dim=1)
        x2 = y2 - self.g(y1)
        return torch.cat([y1 - self.f(x2), x2], dim=1)


class SpaceToDepth(Bijection):
    """Invertible down-sampling: each `b x b` pixel block becomes `b*b` channels (a permutation)."""

    def __init__(self, block: int = 2) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.block)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(y, self.block)


class Logit(Bijection):
    """`y = logit(alpha + (1 - 2 alpha) x)`: RealNVP's pre-processing of pixels in [0, 1], made a
    bijection of the whole real line by linear tails where `|y| > tail` (slopes matched).

    The flow models unbounded values. Up to `|y| = tail` the inverse is a sigmoid, so features
    there map back to pixels at most 0.036 outside [0, 1]; past it a pixel moves by
    `sigmoid'(tail) / (1 - 2 alpha)` (0.019) per logit. The tails keep `T(T^-1(z))` finite and
    accurate in float32 for saturated pixels (a pure sigmoid rounds them to the domain's edge, where
    the logit is infinite, and `tail` = 8 left float32 projections 3e-4 off the boundary). An earlier version had the
    tails at `|y| = logit(1 - alpha)`, i.e. at 0 and 1: a counterfactual pushed past the boundary
    then came back with 2-5 % of its pixels more than 0.05 outside [0, 1].
    """

    def __init__(self, alpha: float = LOGIT_ALPHA, tail: float = LOGIT_TAIL) -> None:
        super().__init__()
        self.alpha = alpha
        self.tail = tail
        edge = 1 / (1 + math.exp(tail))                       # sigmoid(-tail)
        self.low = (edge - alpha) / (1 - 2 * alpha)          # x at y = -tail (1 - low at +tail)
        self.slope = edge * (1 - edge) / (1 - 2 * alpha)      # dx/dy at |y| = tail

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside = (x >= self.low) & (x <= 1 - self.low)
        # only read where x is inside; 0.5 elsewhere keeps the unused branch finite
        p = self.alpha + (1 - 2 * self.alpha) * torch.where(inside, x, 0.5)
        log_p, log_q = torch.log(p), torch.log1p(-p)
        below = -self.tail + (x - self.low) / self.slope
        above = self.tail + (x - 1 + self.low) / self.slope
        y = torch.where(inside, log_p - log_q, torch.where(x < self.low, below, above))
        log_slope = torch.where(inside, math.log(1 - 2 * self.alpha) - log_p - log_q,
                                torch.full_like(x, -math.log(self.slope)))
        return y, _per_sample(log_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)[0]

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha)
        below = self.low + (y + self.tail) * self.slope
        above = 1 - self.low + (y - self.tail) * self.slope
        return torch.where(y < -self.tail, below, torch.where(y > self.tail, above, x))


class ActNorm(Bijection):
    """Per-channel affine `y = (x + bias) * exp(log_scale)` (Glow); log-det `H*W*sum(log_scale)`.

    `initialize` sets it from a batch so that its outputs have zero mean and unit variance per
    channel (Glow's data-dependent initialisation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.log_scale)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        self.bias.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
        self.log_scale.copy_(-x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3).log())

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = (x + self.bias) * self.log_scale.exp()
        return y, self.log_scale.sum().expand(len(x)) * (x.shape[2] * x.shape[3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.bias) * self.log_scale.exp()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * (-self.log_scale).exp() - self.bias


class InvertibleConv1x1(Bijection):
    """Invertible 1x1 convolution `y = W x` over channels (Glow), `W = P L (U + diag(s))` in LU
    form: log-det `H*W*sum(log|s|)` without a determinant, inverse from the float64 inverse."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.register_buffer("permutation", torch.eye(c))
        self.register_buffer("sign", torch.ones(c))
        self.register_buffer("lower_mask", torch.tril(torch.ones(c, c), -1))
        self.lower = nn.Parameter(torch.zeros(c, c))
        self.upper = nn.Parameter(torch.zeros(c, c))
        self.log_scale = nn.Parameter(torch.zeros(c))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A random rotation, decomposed (`permutation` and `sign` follow the draw)."""
        c = len(self.sign)
        rotation = torch.linalg.qr(torch.randn(c, c, dtype=torch.float64))[0]
        p, lower, upper = torch.linalg.lu(rotation)
        diagonal = upper.diagonal()
        self.permutation.copy_(p)
        self.sign.copy_(diagonal.sign())
        self.lower.copy_(lower)
        self.upper.copy_(upper.triu(1))
        self.log_scale.copy_(diagonal.abs().log())

    def weight(self) -> torch.Tensor:
        eye = torch.eye(len(self.sign), dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_scale.exp())
        return self.permutation @ lower @ upper

    @staticmethod
    def _mix(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x.movedim(1, -1) @ w.T).movedim(-1, 1)

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return self._mix(self.weight(), x), logdet.expand(len(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mix(self.weight(), x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        return self._mix(torch.linalg.inv(w.double()).to(w.dtype), y)


class Permutation(Bijection):
    """A fixed random permutation of the channels (log-det 0): mixes the halves of the couplings
    where a learned 1x1 convolution is too large to train (see `MAX_CONV_CHANNELS`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("order", torch.randperm(channels))
        self.register_buffer("undo", torch.argsort(self.order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.order]

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, self.undo]


class Partial(Bijection):
    """Applies `layers` to the first `active` channels and passes the rest through unchanged.

    Glow's multi-scale factor-out: channels past `active` have left the flow for the prior, so the
    later, coarser stages spend their computation on the channels still active. A space-to-depth
    of the whole tensor keeps the active channels in front (channel `c` becomes `c f^2 .. c f^2 +
    f^2 - 1`), so one tensor carries every level and `T(x)` keeps the input's size."""

    def __init__(self, active: int, layers: Sequence[Bijection]) -> None:
        super().__init__()
        self.active = active
        self.net = InvertibleNet(layers)

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, logdet = self.net.transform(x[:, :self.active])
        return torch.cat([y, x[:, self.active:]], dim=1), logdet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[:, :self.active]), x[:, self.active:]], dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net.inverse(y[:, :self.active]), y[:, self.active:]], dim=1)

    def initialize(self, x: torch.Tensor) -> None:
        self.net.initialize(x[:, :self.active])


class AffineCoupling(Bijection):
    """Affine coupling (RealNVP / Glow): `y1 = x1`, `y2 = (x2 + t(x1)) * exp(log_s(x1))` with
    `log_s = SCALE_BOUND * tanh(h(x1) / SCALE_BOUND)`; log-det `sum log_s`; inverse
    `x2 = y2 * exp(-log_s) - t`.

    The bound keeps every scale within `exp(+-SCALE_BOUND)`, so the inverse of a feature tensor far
    from the data (a counterfactual) cannot overflow, as it did with Glow's unbounded
    `1 / sigmoid`. `subnet` maps the first half's channels to twice the second half's (`t`, `h`);
    it starts at zero, so the coupling starts as the identity."""

    def __init__(self, subnet: nn.Module) -> None:
        super().__init__()
        self.subnet = subnet

    def _shift_log_scale(self, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, raw = self.subnet(x1).chunk(2, dim=1)
        return shift, SCALE_BOUND * torch.tanh(raw / SCALE_BOUND)

    @staticmethod
    def _halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = x.shape[1] // 2
        return x[:, :half], x[:, half:]

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = self._halves(x)
        shift, log_scale = self._shift_log_scale(x1)
        return torch.cat([x1, (x2 + shift) * log_scale.exp()], dim=1), _per_sample(log_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)[0]

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = self._halves(y)
        shift, log_scale = self._shift_log_scale(y1)
        return torch.cat([y1, y2 * (-log_scale).exp() - shift], dim=1)


class InvertibleNet(nn.Module):
    """The bijection `T`: layers applied in order; `inverse` undoes them in reverse order."""

    def __init__(self, layers: Sequence[Bijection]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def transform(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(T(x), log|det dT/dx|)` per sample."""
        total = x.new_zeros(len(x))
        for layer in self.layers:
            x, logdet = layer.transform(x)
            total = total + logdet
        return x, total

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent initialisation of every ActNorm from the batch `x`, in order."""
        for layer in self.layers:
            if isinstance(layer, (ActNorm, Partial)):
                layer.initialize(x)
            x = layer(x)
