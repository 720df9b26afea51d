"""Compute precision: fp32, or bf16 autocast over fp32 weights, on the CPU as on the GPU.

One rule for training and inference. Under `bf16` the matmuls and convolutions of
`torch.autocast` run in bf16 (on the CPU's AVX512-BF16 / AMX units where it has them);
weights, optimiser state, EMA copies and checkpoints stay fp32, and the losses compute
their logits and reductions in fp32 (`full_precision`). fp32 is the CPU's default and adds
no context at all, so fp32 results are bit-identical to code that never heard of this
module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

INFERENCE_PRECISIONS = ("fp32", "bf16")
TRAINING_PRECISIONS = ("auto", "fp32", "bf16")


def resolve(precision: str, device: torch.device | str) -> str:
    """`auto` -> bf16 on CUDA, fp32 elsewhere; fp32 / bf16 as given."""
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; expected one of {', '.join(TRAINING_PRECISIONS)}"
        )
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX). Without them
    PyTorch emulates bf16 and it runs slower than fp32 (it is still correct)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX") or _cpuinfo_bf16()


def _cpuinfo_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The context that runs a forward pass in `precision` on `device` (resolved first):
    bf16 autocast, or nothing for fp32."""
    device = torch.device(device)
    if resolve(precision, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Autocast off for `device_type` inside (a loss's logits and reductions); a no-op
    when no autocast is active."""
    # Autocast exists only for real devices: the dry run's meta tensors have none.
    if device_type != "meta" and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield
