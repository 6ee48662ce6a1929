"""Device choice: CUDA when available, else CPU; the `device` param overrides. Also which
precision runs fast there: bf16 only pays on hardware with native support for it."""

from __future__ import annotations

import functools
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


@functools.cache
def _cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: without them CPU bf16 matmuls run far slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is likely to beat fp32 on `device`."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_native_bf16()


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve a `precision` param (auto | fp32 | bf16) for `device`."""
    return precision == "bf16" or (precision == "auto" and fast_bf16(device))


def conv_layout(bf16: bool) -> torch.memory_format:
    """The memory layout for convolutions: channels-last under bf16 autocast, where oneDNN (CPU)
    and tensor cores (CUDA) run them much faster than in NCHW (a CIFAR VIBI step: 1.6x on a
    2-core AVX512-BF16 CPU), contiguous NCHW in fp32, where channels-last is slower on a CPU."""
    return torch.channels_last if bf16 else torch.contiguous_format
