"""Tensor helpers every layer uses: images to [0, 1], batched inference, bf16 autocast, and a
model's weights copied to the CPU for saving."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from xai.devices import CONV_LAYOUT


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; float inputs pass through."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on the device when enabled (CPU and CUDA), else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@torch.inference_mode()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
            batch_size: int = 2048, amp: bool = False) -> torch.Tensor:
    """Outputs of `model` on all of `x` in large batches (float32, on x's device)."""
    device = x.device
    outs = []
    for i in range(0, len(x), batch_size):
        with autocast(device, amp):
            outs.append(model(to_unit(x[i:i + batch_size])).float())
    return torch.cat(outs) if outs else torch.empty(0, device=device)


class Autocast(nn.Module):
    """`module` run under bf16 autocast, its output returned in fp32: a model whose forward passes
    (and gradients) take the fast bf16 path while everything computed from its outputs stays
    fp32. Attributes other than the forward are the wrapped module's."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        device = next(iter(self.module.parameters()), inputs[0]).device
        with autocast(device, True):
            return self.module(*inputs).float()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)


def bf16_passes(model: nn.Module) -> nn.Module:
    """`model` (moved in place to `CONV_LAYOUT`, the layout the CPU's bf16 convolutions run
    fastest in) wrapped in `Autocast`: its passes in bf16, its outputs in fp32."""
    return Autocast(model.to(memory_format=CONV_LAYOUT))


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def state_dict_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """A model's parameters and buffers, detached on the CPU, ready to save."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(model).state_dict().items()}
