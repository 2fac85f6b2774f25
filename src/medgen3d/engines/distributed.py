"""Data-parallel helpers for trainers whose networks run several forwards per step (recurrent generation),
which ``DistributedDataParallel`` does not support: gradients are averaged by hand after backward."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "broadcast_parameters", "average_gradients"]


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast_parameters(modules: Iterable[torch.nn.Module]) -> None:
    """Give every process rank 0's weights."""
    if not is_distributed():
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the processes."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= world
