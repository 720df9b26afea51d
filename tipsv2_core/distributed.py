"""The few collectives the losses need, with a single-process path needing no process group."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenates x [b, ...] from every worker into [world*b, ...], gradients kept.

    `torch.distributed.nn.all_gather` routes each worker's gradient back to its owner, so
    a contrastive loss over global negatives trains every worker's encoder.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of x over workers (no gradient): used for the loss centres."""
    if not is_distributed():
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
