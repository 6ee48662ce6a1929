"""Building blocks shared by the training stages.

Data sets live on the device as tensors; an epoch is a list of index batches drawn from a seeded
generator, so training order is reproducible and no DataLoader or worker process is involved.
Under `torchrun` every rank draws the same global batches and keeps its own slice, so gradients
averaged by DistributedDataParallel equal those of one process on the whole batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from xai.data.prepared import Split
from xai.errors import TrainingError
from xai.io import save_csv
from xai.tensors import predict


def seed_everything(seed: int, device: torch.device) -> torch.Generator:
    """Seed torch and numpy (Captum's GradientShap draws its baselines with numpy) and make CPU
    kernels deterministic; returns a generator for batch order."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run torch's CPU ops on `n` threads inside the block (0: leave the setting alone).

    Small ops gain little from a second thread, and on a busy machine threads that wait for each
    other at every op can make training several times slower than one thread.
    """
    if n <= 0:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def index_batches(n: int, batch_size: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu", drop_last: bool = False
                  ) -> list[torch.Tensor]:
    """Index tensors covering `range(n)` in batches: shuffled by `generator`, else in order."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batches = list(order.to(device).split(batch_size))
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def check_finite(loss: torch.Tensor, stage: str, epoch: int, step: int) -> None:
    """Stop training with a clear error when the loss is NaN or infinite."""
    if not torch.isfinite(loss.detach()).all():
        raise TrainingError(
            f"{stage}: non-finite loss ({loss.detach().float().mean().item()}) at epoch {epoch}, "
            f"step {step}; nothing was saved. Lower the learning rate or check the inputs."
        )


class StopFlag:
    """Set when SIGINT/SIGTERM arrived inside `deferred_interrupts`; check it between steps."""

    requested: bool = False


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[StopFlag]:
    """Turn a first SIGINT/SIGTERM into a flag for the loop to check at a step boundary.

    A training loop can then save a consistent checkpoint (never half an optimizer step) and
    raise `KeyboardInterrupt` itself. A second signal raises `KeyboardInterrupt` at once, so a
    step that hangs can still be stopped from the keyboard. Outside the main thread signals
    cannot be caught: the flag just stays unset.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request(signum: int, _frame: Any) -> None:
        if flag.requested:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopping now")
        flag.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Progress:
    """A tqdm bar over one epoch's steps showing the running loss and throughput."""

    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self._bar = tqdm(total=total, desc=desc, unit="step", disable=not enabled,
                         mininterval=1.0, leave=False, dynamic_ncols=True)
        self._start = time.perf_counter()
        self._items = 0
        self._values: dict[str, str] = {}

    def step(self, items: int, **values: float) -> None:
        """Count one step of `items` inputs; `values` (e.g. loss) update the bar's display."""
        self._items += items
        if values:
            self._values = {k: f"{v:.4g}" for k, v in values.items()}
            self._bar.set_postfix({**self._values, "img/s": f"{self.items_per_second:.0f}"},
                                  refresh=False)
        self._bar.update(1)

    @property
    def items_per_second(self) -> float:
        return self._items / max(time.perf_counter() - self._start, 1e-9)

    def close(self) -> None:
        self._bar.close()


class MetricSink(Protocol):
    """Where a `History` sends its metrics (the pipeline passes an MLflow run)."""

    def log_metric_steps(self, entries: Sequence[tuple[int, Mapping[str, float], int]]) -> None:
        """Record `(step, {key: value}, timestamp in ms)` entries."""


@dataclass
class History:
    """Per-epoch metrics: sent to `run` in batches (at most every `FLUSH_SECONDS`, and by
    `save`; none when `run` is None), written as a CSV (a DVC plots file) by `save`.

    Also tracks wall time since creation and the first time a validation metric reached its
    target (time-to-quality). `prefix` goes before every MLflow key (not the CSV columns), so
    several histories can share one run.
    """

    FLUSH_SECONDS = 10.0

    run: MetricSink | None = None
    target_key: str | None = None
    target: float | None = None
    prefix: str = ""
    rows: list[dict[str, float]] = field(default_factory=list)
    seconds_to_target: float | None = None
    _start: float = field(default_factory=time.perf_counter)
    _pending: list[tuple[int, dict[str, float], int]] = field(default_factory=list)
    _flushed: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def log(self, epoch: float, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Record one evaluation; `epoch` may be fractional (several evaluations per epoch), then
        `step` (e.g. the optimizer step) is the MLflow step instead of the epoch."""
        row = {"epoch": epoch, **{k: float(v) for k, v in metrics.items()},
               "wall_seconds": round(self.elapsed, 3)}
        self.rows.append(row)
        if (self.target_key is not None and self.seconds_to_target is None
                and row.get(self.target_key, -math.inf) >= self.target):
            self.seconds_to_target = row["wall_seconds"]
        self._pending.append((int(epoch) if step is None else step,
                              {f"{self.prefix}{k}": v for k, v in row.items() if k != "epoch"},
                              int(time.time() * 1000)))
        if time.perf_counter() - self._flushed >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Send the metrics logged since the last flush to `run` in one request."""
        if self._pending and self.run is not None:
            self.run.log_metric_steps(self._pending)
            self._pending = []
        self._flushed = time.perf_counter()

    def save(self, path: str | Path) -> None:
        """Flush to `run` and write the rows as a CSV (a DVC plots file)."""
        self.flush()
        save_csv(self.rows, path)

    def restore(self, rows: list[dict[str, float]], elapsed: float,
                seconds_to_target: float | None) -> None:
        """Continue a history saved in a checkpoint: its rows, wall clock and time-to-target."""
        self.rows = [dict(row) for row in rows]
        self._start = time.perf_counter() - elapsed
        self.seconds_to_target = seconds_to_target


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Distributed:
    """This process's place under `torchrun` (rank 0 of 1 when run alone)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch of indices."""
        return batch[self.rank::self.world_size] if self.enabled else batch

    def wrap(self, model: nn.Module, device: torch.device, find_unused_parameters: bool = False
             ) -> nn.Module:
        """DistributedDataParallel around `model` when distributed, else `model` itself.

        On GPUs BatchNorm becomes SyncBatchNorm, so batch statistics are those of the global
        batch; SyncBatchNorm has no CPU kernels, so on CPUs each rank normalises with its own
        shard's statistics (models without BatchNorm train exactly as in one process).
        """
        if not self.enabled:
            return model
        ids = None
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [device.index or 0]
        return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                   find_unused_parameters=find_unused_parameters)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether `flag` is set on any rank (one all-reduce); every rank gets the same answer.

        A stop request (SIGINT on one rank, or on all at slightly different moments) checked
        this way stops every rank after the same step, so none waits in a collective for a rank
        that has left.
        """
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group `torchrun` describes (NCCL on GPUs, gloo on CPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def distributed_device(device: torch.device) -> torch.device:
    """Under torchrun on CUDA, each rank takes the GPU of its local rank."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def accuracy(model: Callable[[torch.Tensor], torch.Tensor], split: Split, batch_size: int
             ) -> float:
    """Share of `split` classified correctly (uint8 images or float points), batched."""
    logits = predict(model, split.x, batch_size)
    return int((logits.argmax(dim=1) == split.y).sum()) / len(split)
