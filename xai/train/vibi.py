"""Training and evaluating a VIBI pair against a black box's stored class probabilities.

Design against the collapse seen in the public code (explainer logits all 0 after warm-up, the same
chunks for every input): the explainer's logits are unbounded (no output ReLU); Adam runs at a
moderate learning rate decayed to 0 by a cosine; the Gumbel temperature anneals geometrically
from `tau_start` to `tau_end` over the whole run, so it is still soft while the explainer learns.

Resumable: a checkpoint (model, optimizer, noise generator, step, best model, history) is
written at every validation and, on SIGINT/SIGTERM, at the next step boundary; with `resume` a
later run with the same settings and data continues from its step and ends with the same weights
as an uninterrupted run. It is deleted once training completes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from xai.data.prepared import Dataset
from xai.devices import conv_layout, use_bf16
from xai.errors import CheckpointError, ConfigError, DataError
from xai.explain.vibi import (
    Vibi,
    VibiSpec,
    js_divergence,
    kl_to_uniform,
    relaxed_k_hot,
    soft_cross_entropy,
    vibi_loss,
)
from xai.io import load_torch, save_torch
from xai.models.explainers import check_fits
from xai.settings import TAU_MIN, bounded
from xai.train.loop import (
    Distributed,
    History,
    Progress,
    autocast,
    check_finite,
    deferred_interrupts,
    index_batches,
    state_dict_cpu,
    to_unit,
)


@dataclass(frozen=True)
class VibiConfig:
    """VIBI (and L2X, its beta = 0 entry): explainer, approximator, sampler and training."""

    objective: Literal["published", "blackbox", "realx"] = 'blackbox'
    explainer_type: Literal["Unet", "ResNet_2x", "ResNet_4x", "ResNet_8x"] = 'ResNet_4x'
    xpl_channels: Literal[1, 3] = 1
    width: float = bounded(0.5, gt=0)
    k: int = bounded(4, ge=1)
    beta: float = bounded(0.01, ge=0)
    num_samples: int = bounded(2, ge=1)
    straight_through: bool = False
    epochs: int = bounded(2, ge=1)
    l2x_epochs: int = bounded(2, ge=1)
    evals_per_epoch: int = bounded(2, ge=1)
    batch_size: int = bounded(64, ge=1)
    lr: float = bounded(0.001, gt=0)
    warmup_steps: int = bounded(200, ge=0)
    tau_start: float = bounded(1.0, ge=TAU_MIN, le=100)
    tau_end: float = bounded(0.3, ge=TAU_MIN, le=100)
    precision: Literal["auto", "fp32", "bf16"] = 'auto'
    save_best: bool = True
    resume: bool = True
    jump_start: bool = False

    def __post_init__(self) -> None:
        if self.tau_end > self.tau_start:
            raise ConfigError(
                f"`tau_end` = {self.tau_end} is above `tau_start` = {self.tau_start}; "
                "the temperature anneals downwards", owner=VibiConfig, fields=("tau_end", "tau_start"))

CHECKPOINT_KIND = "xai.vibi_checkpoint"
EXPLANATIONS_KIND = "xai.vibi_explanations"


@dataclass(frozen=True)
class Targets:
    """One split: uint8 images and the black box's class probabilities for them, on the device."""

    x: torch.Tensor
    probs: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


def temperature(step: int, warmup: int, total: int, tau_start: float, tau_end: float) -> float:
    """Geometric annealing from tau_start (first step after warm-up) to tau_end (last step)."""
    span = total - warmup - 1
    if span <= 0:
        return tau_end
    frac = min(max((step - warmup) / span, 0.0), 1.0)
    return tau_start * (tau_end / tau_start) ** frac


def learning_rate(step: int, total: int, lr: float) -> float:
    """Cosine decay from `lr` at step 0 to 0 after the last step."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


def entry_settings(settings: VibiConfig, method: str) -> VibiConfig:
    """The settings of one pipeline entry: `vibi` as configured, `l2x` with beta 0 from scratch."""
    if method == "l2x":
        return replace(settings, beta=0.0, epochs=settings.l2x_epochs, jump_start=False)
    return settings


def spec_for(settings: VibiConfig, data: Dataset) -> VibiSpec:
    """The model spec for `data`, checking the settings against its image shape."""
    if len(data.input_shape) != 3:
        raise DataError(f"VIBI explains images; {data.name} holds inputs of shape {data.input_shape}")
    check_fits(settings.explainer_type, settings.xpl_channels, settings.k, data.input_shape,
               data.name, owner=VibiConfig)
    c, h, w = data.input_shape
    return VibiSpec(settings.explainer_type, settings.xpl_channels, settings.width, c, h, w,
                    data.num_classes, settings.k)


# ----------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Explanations:
    """Per-input results on one split: chunk distributions, top-k masks, approximator output."""

    chunk_probs: torch.Tensor       # N x d, p(z | x)
    top_k: torch.Tensor             # N x d, bool, the k chunks kept
    approx_probs: torch.Tensor      # N x K, q(y | top-k masked x)
    kl: torch.Tensor                # N, KL(p(z | x) || uniform)
    posthoc_probs: torch.Tensor | None  # N x K, the black box on the masked input


@torch.inference_mode()
def explain_split(model: Vibi, x: torch.Tensor, blackbox: Callable[[torch.Tensor], torch.Tensor] | None
            = None, batch_size: int = 1000, amp: bool = False,
            approximator: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Explanations:
    """Run the explainer (hard top-k) and approximator, optionally the black box, on all of `x`.
    `approximator` replaces the pair's own (the `blackbox` objective's frozen black box)."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("p", "m", "q", "kl", "bb")}
    for i in range(0, len(x), batch_size):
        xb = to_unit(x[i:i + batch_size]).contiguous(memory_format=conv_layout(amp))
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


def summarize(expl: Explanations, blackbox_probs: torch.Tensor) -> dict[str, float]:
    """fidelity, mean_kl, mean_js (and posthoc_accuracy when the black box was run)."""
    target = blackbox_probs.argmax(-1)
    out = {
        "fidelity": (expl.approx_probs.argmax(-1) == target).float().mean().item(),
        "mean_kl": expl.kl.mean().item(),
        "mean_js": js_divergence(blackbox_probs.float(), expl.approx_probs).mean().item(),
    }
    if expl.posthoc_probs is not None:
        out["posthoc_accuracy"] = (expl.posthoc_probs.argmax(-1) == target).float().mean().item()
    return out


def explanations_state(model: Vibi, expl: Explanations, blackbox_probs: torch.Tensor
                       ) -> dict[str, Any]:
    """The file the render stage reads: chunk grids (float16 / bool) for every input of a split."""
    s = model.spec
    grid = (len(expl.top_k), s.xpl_channels, *s.grid)
    return {
        "kind": EXPLANATIONS_KIND,
        "spec": asdict(s),
        "chunk_probs": expl.chunk_probs.reshape(grid).half().cpu(),
        "top_k": expl.top_k.reshape(grid).cpu(),
        "approximator_probs": expl.approx_probs.half().cpu(),
        "js": js_divergence(blackbox_probs.float(), expl.approx_probs).cpu(),
        **({} if expl.posthoc_probs is None else
           {"blackbox_on_kept_probs": expl.posthoc_probs.half().cpu()}),
    }


# ----------------------------------------------------------------------------- training


def fingerprint(settings: VibiConfig, seed: int, **extra: Any) -> str:
    """A hash of everything that shapes a training run; a checkpoint resumes only on a match."""
    fields = {k: v for k, v in asdict(settings).items() if k not in ("resume", "save_best")}
    text = json.dumps({"settings": fields, "seed": seed, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def targets_digest(*splits: Targets) -> str:
    """sha256 of the splits' shapes and black-box probabilities (the images determine those)."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update(str(tuple(split.x.shape)).encode())
        digest.update(split.probs.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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

    def __init__(self, model: Vibi, beta: float, num_samples: int, objective: str = "published",
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


@dataclass
class _Loop:
    """The mutable state a checkpoint captures."""

    step: int = 0
    best_fidelity: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    sums: dict[str, float] = field(default_factory=dict)  # training losses since the last evaluation


def evaluation_steps(steps_per_epoch: int, evals_per_epoch: int) -> set[int]:
    """Steps within an epoch (1-based) after which validation runs: evenly spaced, the last
    one at the epoch's end."""
    n = min(evals_per_epoch, steps_per_epoch)
    return {round(steps_per_epoch * (i + 1) / n) for i in range(n)}


def train(model: Vibi, settings: VibiConfig, train_set: Targets, val_set: Targets, *,
          seed: int, history: History, checkpoint: str | Path | None = None,
          jump_started: bool = False, run_id: str = "", desc: str = "vibi",
          show_progress: bool = True, dist: Distributed = Distributed(),
          blackbox: nn.Module | None = None) -> Vibi:
    """Train `model` in place for `settings.epochs` epochs; returns it (with `settings.save_best`,
    the weights of the evaluation with the best validation fidelity).

    Validation runs `settings.evals_per_epoch` times per epoch; each evaluation is a row of
    `history` (fractional epochs) and a checkpoint. The approximator first trains alone on
    unmasked inputs for `settings.warmup_steps` steps, unless `jump_started` (the pair already
    works on masked inputs). `run_id` goes into the checkpoint fingerprint (e.g. the digest of
    the jump-start model). `settings.objective` says who predicts from the kept chunks
    (`TrainingObjective`); `blackbox` (a frozen model on float [0, 1] images) is needed for
    `blackbox`. Under bf16 autocast `model` and `blackbox` are left channels-last.
    With `blackbox`, the approximator is not trained and validation fidelity is the black box's
    own agreement on the kept chunks; with `realx`, the approximator is frozen after warm-up.
    """
    if settings.objective == "blackbox" and blackbox is None:
        raise ValueError("objective 'blackbox' needs the black box")
    device = train_set.x.device
    amp = use_bf16(settings.precision, device)
    steps_per_epoch = max(len(train_set) // settings.batch_size, 1)
    total = steps_per_epoch * settings.epochs
    warmup = 0 if jump_started or settings.objective == "blackbox" else settings.warmup_steps
    if warmup >= total:  # the explainer would never train
        raise ConfigError(f"`warmup_steps` = {settings.warmup_steps} is out of range; allowed: "
                          f"< {total} (the training steps: {settings.epochs} epochs of "
                          f"{steps_per_epoch} batches), or objective blackbox (no warm-up)",
                          owner=VibiConfig, fields=("warmup_steps",))
    eval_at = evaluation_steps(steps_per_epoch, settings.evals_per_epoch)
    tag = fingerprint(settings, seed, run=run_id, data=targets_digest(train_set, val_set))
    optimizer = torch.optim.Adam([{"params": model.explainer.parameters(), "name": "explainer"},
                                  {"params": model.approximator.parameters(),
                                   "name": "approximator"}], lr=settings.lr)
    frozen = None if blackbox is None else blackbox.eval().requires_grad_(False)
    layout = conv_layout(amp)
    for net in (model, frozen):
        if net is not None:
            net.to(memory_format=layout)
    approximator = frozen if settings.objective == "blackbox" else None
    objective = dist.wrap(TrainingObjective(model, settings.beta, settings.num_samples,
                                            settings.objective, frozen,
                                            settings.straight_through),
                          device,
                          find_unused_parameters=warmup > 0 or settings.objective != "published")
    noise = torch.Generator(device=device).manual_seed(seed)
    loop = _Loop()
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if settings.resume and ckpt is not None and ckpt.is_file():
        loop = _restore(ckpt, tag, model, optimizer, noise, history) or loop

    def save_checkpoint() -> None:
        if ckpt is None or not dist.is_main:
            return
        save_torch({"kind": CHECKPOINT_KIND, "fingerprint": tag, "step": loop.step,
                    "model": state_dict_cpu(model), "optimizer": optimizer.state_dict(),
                    "noise": noise.get_state(), "best_fidelity": loop.best_fidelity,
                    "best_state": loop.best_state, "sums": loop.sums, "rows": history.rows,
                    "elapsed": history.elapsed,
                    "seconds_to_target": history.seconds_to_target}, ckpt,
                   staged=False)  # not a stage output: it must exist now, to resume from

    def evaluate(tau: float, rate: float) -> None:
        val = summarize(explain_split(model, val_set.x, amp=amp, approximator=approximator),
                        val_set.probs)
        steps = max(loop.sums.pop("steps", 1.0), 1.0)
        history.log(loop.step / steps_per_epoch, {
            "step": loop.step, "tau": tau, "lr": learning_rate(loop.step, total, settings.lr),
            **{f"train_{k}": v / steps for k, v in loop.sums.items()},
            "val_fidelity": val["fidelity"], "val_mean_kl": val["mean_kl"],
            "val_mean_js": val["mean_js"], "images_per_second": rate,
        }, step=loop.step)
        loop.sums = {}
        if val["fidelity"] >= loop.best_fidelity:  # ties: the later, longer-trained weights
            loop.best_fidelity, loop.best_state = val["fidelity"], state_dict_cpu(model)

    model.train()
    with deferred_interrupts() as stop:
        for epoch in range(loop.step // steps_per_epoch, settings.epochs):
            order = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            batches = index_batches(len(train_set), settings.batch_size, order, device,
                                    drop_last=True)[:steps_per_epoch]
            first = loop.step - epoch * steps_per_epoch
            bar = Progress(steps_per_epoch - first, f"{desc} epoch {epoch + 1}/{settings.epochs}",
                           show_progress and dist.is_main)
            for batch in batches[first:]:
                idx = dist.shard(batch)
                shard = (len(batch), dist.rank, dist.world_size) if dist.enabled else None
                tau = temperature(loop.step, warmup, total, settings.tau_start, settings.tau_end)
                for group in optimizer.param_groups:
                    trains = group["name"] == "explainer" or settings.objective == "published" \
                        or (settings.objective == "realx" and loop.step < warmup)
                    group["lr"] = learning_rate(loop.step, total, settings.lr) if trains else 0.0
                x = to_unit(train_set.x[idx]).contiguous(memory_format=layout)
                p = train_set.probs[idx]
                with autocast(device, amp):
                    loss, ce, kl = objective(x, p, tau, loop.step < warmup, noise, shard)
                check_finite(loss, desc, epoch + 1, loop.step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loop.step += 1
                values = torch.stack([loss.detach().float(), ce.detach().float(),
                                      kl.detach().float()]).tolist()  # one device sync
                for key, value in zip(("loss", "ce", "kl", "steps"), (*values, 1.0)):
                    loop.sums[key] = loop.sums.get(key, 0.0) + value
                bar.step(len(batch), loss=values[0], tau=tau)
                stopping = dist.any(stop.requested, device)  # same step on every rank
                if loop.step - epoch * steps_per_epoch in eval_at:
                    evaluate(tau, bar.items_per_second)
                    save_checkpoint()
                elif stopping:
                    save_checkpoint()
                if stopping:
                    bar.close()
                    dist.barrier()  # no rank exits (and gets the others killed) mid-save
                    raise KeyboardInterrupt(f"{desc}: interrupted at step {loop.step}")
            bar.close()
    if settings.save_best and loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    if ckpt is not None and dist.is_main:
        ckpt.unlink(missing_ok=True)
    return model.eval()


def _restore(path: Path, tag: str, model: Vibi, optimizer: torch.optim.Optimizer,
             noise: torch.Generator, history: History) -> _Loop | None:
    """Load a checkpoint into the live objects; None (start afresh) if it is from other settings."""
    try:
        state = load_torch(path, kind=CHECKPOINT_KIND,
                           required=("fingerprint", "step", "model", "optimizer", "noise"))
    except CheckpointError as exc:
        print(f"resume: ignoring {path}: {exc}")
        return None
    if state["fingerprint"] != tag:
        print(f"resume: {path} was written with other settings; starting afresh")
        return None
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    noise.set_state(state["noise"])
    history.restore(state["rows"], state["elapsed"], state["seconds_to_target"])
    print(f"resume: continuing from step {state['step']} of {path}")
    return _Loop(state["step"], state["best_fidelity"], state["best_state"], state["sums"])
