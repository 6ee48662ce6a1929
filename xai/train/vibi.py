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

from xai.data.prepared import Dataset, Split
from xai.devices import CONV_LAYOUT, use_bf16
from xai.errors import CheckpointError, ConfigError, DataError
from xai.io import load_torch, save_torch
from xai.models.explainers import check_fits
from xai.models.vibi import Explanations, Fill, VibiModel, VibiSpec, explain_split
from xai.settings import TAU_MIN, bounded
from xai.tensors import autocast, state_dict_cpu, to_unit
from xai.train.loop import (
    Distributed,
    History,
    Progress,
    StopFlag,
    check_finite,
    deferred_interrupts,
    index_batches,
)
from xai.train.vibi_objective import TrainingObjective, js_divergence


@dataclass(frozen=True)
class VibiConfig:
    """VIBI (and L2X, its beta = 0 entry): explainer, approximator, sampler and training."""

    objective: Literal["published", "blackbox", "realx"] = 'blackbox'
    explainer_type: Literal["Unet", "ResNet_2x", "ResNet_4x", "ResNet_8x"] = 'ResNet_4x'
    xpl_channels: Literal[1, 3] = 1
    width_multiplier: float = bounded(0.5, gt=0)  # explainer and approximator channels
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
    fill: Fill = 'zero'  # the removed pixels, as the predictor sees them

    def __post_init__(self) -> None:
        if self.tau_end > self.tau_start:
            raise ConfigError(
                f"`tau_end` = {self.tau_end} is above `tau_start` = {self.tau_start}; "
                "the temperature anneals downwards", owner=VibiConfig, fields=("tau_end", "tau_start"))

CHECKPOINT_KIND = "xai.vibi_checkpoint"
EXPLANATIONS_KIND = "xai.vibi_explanations"


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
    return VibiSpec(settings.explainer_type, settings.xpl_channels, settings.width_multiplier, c, h, w,
                    data.num_classes, settings.k, settings.fill)


# ----------------------------------------------------------------------------- evaluation


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


def explanations_state(model: VibiModel, expl: Explanations, blackbox_probs: torch.Tensor
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


def targets_digest(*splits: Split) -> str:
    """sha256 of the splits' shapes and black-box probabilities (the images determine those)."""
    digest = hashlib.sha256()
    for split in splits:
        digest.update(str(tuple(split.x.shape)).encode())
        digest.update(split.y.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


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


def train(model: VibiModel, settings: VibiConfig, train_set: Split, val_set: Split, *,
          seed: int, history: History, checkpoint: str | Path | None = None,
          jump_started: bool = False, run_id: str = "", desc: str = "vibi",
          show_progress: bool = True, dist: Distributed = Distributed(),
          blackbox: nn.Module | None = None,
          on_validation: Callable[[int, VibiModel], None] | None = None) -> VibiModel:
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

    `on_validation(step, model)`, if given, is called before the first step (step 0, or the step
    a resumed run continues from) and after each validation, with the optimizer steps done so
    far: a place to watch the explanations form (the pipeline logs their grid to MLflow). The
    model's train/eval mode is restored after it and its draws from the global random generators
    are undone; it must not change weights or gradients (e.g. it explains under
    `torch.inference_mode`), and then training ends bit-identical with and without it.
    """
    run = _Training(model, settings, train_set, val_set, seed=seed, history=history,
                    checkpoint=checkpoint, jump_started=jump_started, run_id=run_id, desc=desc,
                    show_progress=show_progress, dist=dist, blackbox=blackbox,
                    on_validation=on_validation)
    model.train()
    run.watch()
    with deferred_interrupts() as stop:
        for epoch in range(run.loop.step // run.steps_per_epoch, settings.epochs):
            run.run_epoch(epoch, stop)
    return run.finish()


class _Training:
    """One `train` call: the objects its steps share (model, optimizer, objective, noise
    generator, loop state), so each step is a named method rather than a closure."""

    def __init__(self, model: VibiModel, settings: VibiConfig, train_set: Split, val_set: Split,
                 *, seed: int, history: History, checkpoint: str | Path | None,
                 jump_started: bool, run_id: str, desc: str, show_progress: bool,
                 dist: Distributed, blackbox: nn.Module | None,
                 on_validation: Callable[[int, VibiModel], None] | None = None) -> None:
        """Check the settings, then set up optimizer, objective, noise and resume, in
        this order (the objective's wrap and the resume act on what comes before them)."""
        if settings.objective == "blackbox" and blackbox is None:
            raise ValueError("objective 'blackbox' needs the black box")
        self.model, self.settings, self.history, self.dist = model, settings, history, dist
        self.train_set, self.val_set, self.seed, self.desc = train_set, val_set, seed, desc
        self.show_progress, self.on_validation = show_progress, on_validation
        self.device = train_set.x.device
        self.amp = use_bf16(settings.precision, self.device)
        self.steps_per_epoch = max(len(train_set) // settings.batch_size, 1)
        self.total = self.steps_per_epoch * settings.epochs
        self.warmup = self._warmup_steps(jump_started)
        self.eval_at = evaluation_steps(self.steps_per_epoch, settings.evals_per_epoch)
        self.tag = fingerprint(settings, seed, run=run_id,
                               data=targets_digest(train_set, val_set))
        self.optimizer = torch.optim.Adam(
            [{"params": model.explainer.parameters(), "name": "explainer"},
             {"params": model.approximator.parameters(), "name": "approximator"}],
            lr=settings.lr)
        frozen = self._frozen_blackbox(blackbox)
        self.approximator = frozen if settings.objective == "blackbox" else None  # for validation
        self.objective = self._objective(frozen)
        self.noise = torch.Generator(device=self.device).manual_seed(seed)
        self.ckpt = Path(checkpoint) if checkpoint is not None else None
        self.loop = self._resume()

    def _warmup_steps(self, jump_started: bool) -> int:
        """Steps the approximator trains alone on unmasked inputs: none after a jump start or
        against the black box; an error if they would leave the explainer no step."""
        settings = self.settings
        warmup = 0 if jump_started or settings.objective == "blackbox" else settings.warmup_steps
        if warmup >= self.total:  # the explainer would never train
            raise ConfigError(
                f"`warmup_steps` = {settings.warmup_steps} is out of range; allowed: "
                f"< {self.total} (the training steps: {settings.epochs} epochs of "
                f"{self.steps_per_epoch} batches), or objective blackbox (no warm-up)",
                owner=VibiConfig, fields=("warmup_steps",))
        return warmup

    def _frozen_blackbox(self, blackbox: nn.Module | None) -> nn.Module | None:
        """`blackbox` in eval mode without gradients; it and the model get the convolution
        layout (`xai.devices.CONV_LAYOUT`)."""
        frozen = None if blackbox is None else blackbox.eval().requires_grad_(False)
        for net in (self.model, frozen):
            if net is not None:
                net.to(memory_format=CONV_LAYOUT)
        return frozen

    def _objective(self, frozen: nn.Module | None) -> nn.Module:
        """The training loss module, wrapped by `dist.wrap` (DistributedDataParallel under
        torchrun; parameters may go unused in warm-up or when the approximator is frozen)."""
        s = self.settings
        objective = TrainingObjective(self.model, s.beta, s.num_samples, s.objective, frozen,
                                      s.straight_through)
        return self.dist.wrap(objective, self.device,
                              find_unused_parameters=self.warmup > 0 or s.objective != "published")

    def _resume(self) -> _Loop:
        """The loop state of a matching checkpoint (loaded into model, optimizer, noise and
        history) when `settings.resume`; a fresh one otherwise."""
        if self.settings.resume and self.ckpt is not None and self.ckpt.is_file():
            restored = _restore(self.ckpt, self.tag, self.model, self.optimizer, self.noise,
                                self.history)
            if restored is not None:
                return restored
        return _Loop()

    def save_checkpoint(self) -> None:
        """Write everything a later run needs to continue from this step (main rank only)."""
        if self.ckpt is None or not self.dist.is_main:
            return
        loop, history = self.loop, self.history
        save_torch({"kind": CHECKPOINT_KIND, "fingerprint": self.tag, "step": loop.step,
                    "model": state_dict_cpu(self.model), "optimizer": self.optimizer.state_dict(),
                    "noise": self.noise.get_state(), "best_fidelity": loop.best_fidelity,
                    "best_state": loop.best_state, "sums": loop.sums, "rows": history.rows,
                    "elapsed": history.elapsed,
                    "seconds_to_target": history.seconds_to_target}, self.ckpt,
                   staged=False)  # not a stage output: it must exist now, to resume from

    def validate(self, tau: float, rate: float) -> None:
        """Log a `history` row (mean training losses since the last one, validation measures)
        and keep the weights if their validation fidelity is the best so far."""
        loop = self.loop
        val = summarize(explain_split(self.model, self.val_set.x, amp=self.amp,
                                      approximator=self.approximator), self.val_set.y)
        steps = max(loop.sums.pop("steps", 1.0), 1.0)
        self.history.log(loop.step / self.steps_per_epoch, {
            "step": loop.step, "tau": tau,
            "lr": learning_rate(loop.step, self.total, self.settings.lr),
            **{f"train_{k}": v / steps for k, v in loop.sums.items()},
            "val_fidelity": val["fidelity"], "val_mean_kl": val["mean_kl"],
            "val_mean_js": val["mean_js"], "images_per_second": rate,
        }, step=loop.step)
        loop.sums = {}
        if val["fidelity"] >= loop.best_fidelity:  # ties: the later, longer-trained weights
            loop.best_fidelity, loop.best_state = val["fidelity"], state_dict_cpu(self.model)

    def watch(self) -> None:
        """Call `on_validation` with the step and the model; the model's mode and the global
        random generators (CPU, and the training device's) are as they were before."""
        if self.on_validation is None:
            return
        devices = [] if self.device.type == "cpu" else [self.device]
        kind = self.device.type if devices else None
        with torch.random.fork_rng(devices=devices, device_type=kind):
            training = self.model.training
            try:
                self.on_validation(self.loop.step, self.model)
            finally:
                self.model.train(training)

    def _set_learning_rates(self) -> None:
        """This step's cosine learning rate for the groups that train now, 0 for the others: the
        approximator trains only with `published`, or with `realx` during warm-up."""
        s, step = self.settings, self.loop.step
        for group in self.optimizer.param_groups:
            trains = group["name"] == "explainer" or s.objective == "published" \
                or (s.objective == "realx" and step < self.warmup)
            group["lr"] = learning_rate(step, self.total, s.lr) if trains else 0.0

    def step(self, batch: torch.Tensor, epoch: int, bar: Progress) -> float:
        """One optimizer step on a global batch of indices (this rank's shard of it); adds its
        losses to the loop's sums and returns its Gumbel temperature."""
        loop, dist = self.loop, self.dist
        idx = dist.shard(batch)
        shard = (len(batch), dist.rank, dist.world_size) if dist.enabled else None
        tau = temperature(loop.step, self.warmup, self.total, self.settings.tau_start,
                          self.settings.tau_end)
        self._set_learning_rates()
        x = to_unit(self.train_set.x[idx]).contiguous(memory_format=CONV_LAYOUT)
        p = self.train_set.y[idx]
        with autocast(self.device, self.amp):
            loss, ce, kl = self.objective(x, p, tau, loop.step < self.warmup, self.noise, shard)
        check_finite(loss, self.desc, epoch + 1, loop.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        loop.step += 1
        values = torch.stack([loss.detach().float(), ce.detach().float(),
                              kl.detach().float()]).tolist()  # one device sync
        for key, value in zip(("loss", "ce", "kl", "steps"), (*values, 1.0)):
            loop.sums[key] = loop.sums.get(key, 0.0) + value
        bar.step(len(batch), loss=values[0], tau=tau)
        return tau

    def run_epoch(self, epoch: int, stop: StopFlag) -> None:
        """The epoch's remaining steps (all but those done before a resume), validating and
        checkpointing at `eval_at`; on a stop request, checkpoint and raise KeyboardInterrupt
        after the same step on every rank."""
        settings, dist = self.settings, self.dist
        order = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        batches = index_batches(len(self.train_set), settings.batch_size, order, self.device,
                                drop_last=True)[:self.steps_per_epoch]
        first = self.loop.step - epoch * self.steps_per_epoch
        bar = Progress(self.steps_per_epoch - first,
                       f"{self.desc} epoch {epoch + 1}/{settings.epochs}",
                       self.show_progress and dist.is_main)
        for batch in batches[first:]:
            tau = self.step(batch, epoch, bar)
            stopping = dist.any(stop.requested, self.device)  # same step on every rank
            if self.loop.step - epoch * self.steps_per_epoch in self.eval_at:
                self.validate(tau, bar.items_per_second)
                self.save_checkpoint()
                self.watch()
            elif stopping:
                self.save_checkpoint()
            if stopping:
                bar.close()
                dist.barrier()  # no rank exits (and gets the others killed) mid-save
                raise KeyboardInterrupt(f"{self.desc}: interrupted at step {self.loop.step}")
        bar.close()

    def finish(self) -> VibiModel:
        """The model in eval mode with the best validation weights (with `save_best`); the
        checkpoint, no longer needed, is deleted."""
        if self.settings.save_best and self.loop.best_state is not None:
            self.model.load_state_dict(self.loop.best_state)
        if self.ckpt is not None and self.dist.is_main:
            self.ckpt.unlink(missing_ok=True)
        return self.model.eval()


def _restore(path: Path, tag: str, model: VibiModel, optimizer: torch.optim.Optimizer,
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
