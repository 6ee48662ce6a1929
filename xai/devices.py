"""Device choice: CUDA when available, else CPU; the `device` param overrides. Also which
precision runs fast there: bf16 only pays on hardware with native support for it."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import torch

from xai.errors import ConfigError


def select_device(name: str = "auto") -> torch.device:
    """Resolve `auto`, `cpu`, `cuda`, `cuda:N` or `mps` to an available torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device = {name!r} but no CUDA device is available; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device = {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device = {name!r} but MPS is not available; use auto or cpu")
    return device


#: Set to 0 to treat this CPU as one without native bf16 (`precision: auto` then runs fp32, as
#: on most laptops): how the suite and the pipeline are checked for such hosts on one that has it.
CPU_BF16_VARIABLE = "XAI_CPU_BF16"
#: CPU flags of native bf16 arithmetic (AVX512-BF16, AMX): `precision: auto` runs bf16 on a CPU
#: with any of them.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's instruction-set flags as Linux lists them (empty where /proc/cpuinfo is absent)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX (unless `XAI_CPU_BF16=0`): without them CPU bf16 matmuls run far
    slower than fp32."""
    if os.environ.get(CPU_BF16_VARIABLE) == "0":
        return False
    return bool(cpu_flags() & NATIVE_BF16_FLAGS)


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is likely to beat fp32 on `device`."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_native_bf16()


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve a `precision` param (auto | fp32 | bf16) for `device`."""
    return precision == "bf16" or (precision == "auto" and fast_bf16(device))


#: The memory layout for convolutions, in every precision: oneDNN (CPU) and tensor cores (CUDA)
#: run them much faster channels-last than NCHW under bf16 autocast (a CIFAR VIBI step: 1.6x on a
#: 2-core AVX512-BF16 CPU), and on that CPU in fp32 too (VIBI's explain pass 2.3x, its training
#: step 1.1x, near the noise, with `XAI_CPU_BF16=0`: `experiments/bench_fp32_before.json`
#: against `experiments/bench_fp32.json`; fp32 on CUDA unmeasured).
CONV_LAYOUT = torch.channels_last


def channels_last_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` with its convolution weights in `CONV_LAYOUT`, for a method that runs
    many passes through it (integrated gradients: ~1.4x in fp32 on a CPU), leaving the model
    itself, and every other method's arithmetic, as it was."""
    return copy.deepcopy(model).to(memory_format=CONV_LAYOUT)
