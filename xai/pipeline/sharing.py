"""How a stage's OpenMP threads wait, chosen before torch starts them.

OpenMP threads that spin while they wait are fastest on idle cores and starve a neighbour on
busy ones: the MNIST `evaluate` took 4.4x its time alone beside one 2-thread torch job with
spinning threads, 1.9x with passive ones, which cost it 24 % alone (`experiments/shared_cores.py`,
docs/performance.md). So a stage waits passively when the cores are already busy as it starts
(or in a queued experiment, whose workers share them by design), and spins otherwise; a policy
the user set wins. The wait policy changes no result: only the thread count does.
"""

from __future__ import annotations

import os

import psutil

BUSY_CORES = 0.5  # other processes using this much of the machine (in cores) make it busy
SAMPLE_SECONDS = 0.2


def busy_cores(seconds: float = SAMPLE_SECONDS) -> float:
    """How many cores' worth of work the whole machine did over the next `seconds`."""
    return psutil.cpu_percent(interval=seconds) / 100 * (psutil.cpu_count() or 1)


def wait_policy(environ: dict[str, str], queued: bool, busy: float) -> str | None:
    """The OMP_WAIT_POLICY a stage should start with: the user's if set, PASSIVE in a queued
    experiment or when other work keeps at least `BUSY_CORES` cores busy, else None (spin)."""
    if "OMP_WAIT_POLICY" in environ:
        return environ["OMP_WAIT_POLICY"]
    return "PASSIVE" if queued or busy >= BUSY_CORES else None


def choose_wait_policy(queued: bool) -> str | None:
    """Set OMP_WAIT_POLICY in this process's environment as `wait_policy` says (call before
    importing torch); returns it. The cores are sampled only when the choice depends on it."""
    decided = "OMP_WAIT_POLICY" in os.environ or queued
    policy = wait_policy(dict(os.environ), queued, 0.0 if decided else busy_cores())
    if policy is not None:
        os.environ["OMP_WAIT_POLICY"] = policy
    return policy
