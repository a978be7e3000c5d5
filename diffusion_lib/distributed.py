"""Data-parallel training under ``torchrun``: the process group, the wrapped model, and the few collectives.

The Trainer calls :func:`init_from_env` once. Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment,
or ``WORLD_SIZE=1``) it returns :data:`SINGLE` and the Trainer behaves exactly as a plain process.
Under ``torchrun --nproc_per_node=N`` each process joins one group (``torch.distributed``, backend
``nccl`` on CUDA, ``gloo`` on the CPU) and trains with ``DistributedDataParallel``: gradients are
averaged across processes in the backward pass, so every process holds the same weights after each step.

What the Trainer asks of this module, and when (no extra synchronisation per step except the tiny
CPU all-reduce of the stop flag, which never waits for the GPU):

    wrap(model)                  DistributedDataParallel that still answers ``model.null_label`` etc.
    mean_(tensors)               at log rows: the losses averaged over processes
    first_bad_step(flag)         at log rows and saves: the earliest non-finite step on any process
    max_int(signum)              every step: did any process receive SIGINT/SIGTERM (CPU, gloo)
    gather(obj)                  at saves: every process's random-generator states, for rank 0 to store

See docs/distributed.md for the commands and the guarantees.
"""

from __future__ import annotations

import atexit
import dataclasses
import os

import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass(frozen=True)
class Context:
    """Where this process stands in the group.

    Attributes:
        rank: this process's index in [0, world_size - 1]; rank 0 writes every file.
        world_size: number of processes (1: not distributed).
        local_rank: index on this machine (the CUDA device used is ``cuda:local_rank``).
        stop_group: the CPU (gloo) group that carries the stop flag (None when not distributed).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    stop_group: object = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError as error:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (torchrun sets it)") from error


def init_from_env(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    Args:
        device: the resolved training device; under ``torchrun`` a CUDA device becomes ``cuda:LOCAL_RANK``.

    Returns:
        (the :class:`Context`, the device this process trains on). Without ``WORLD_SIZE`` > 1: (SINGLE, device).

    Raises:
        ValueError: a malformed environment, MPS under torchrun (no collective backend), or more
            processes on a machine than it has CUDA devices.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return SINGLE, device
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "mps":
        raise ValueError("training.device 'mps' cannot run under torchrun (no collective backend); use cpu or cuda")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} CUDA "
                             "device(s); start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, **({"device_id": device} if device.type == "cuda" else {}))
        atexit.register(_destroy)
    stop_group = dist.new_group(backend="gloo") if device.type == "cuda" else dist.group.WORLD
    return Context(dist.get_rank(), dist.get_world_size(), local_rank, stop_group), device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _DataParallel(nn.parallel.DistributedDataParallel):
    """DistributedDataParallel that answers attribute questions (``null_label``, ``config``) from the wrapped model."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(model: nn.Module, context: Context, device: torch.device) -> nn.Module:
    """``model`` itself when not distributed, else a DistributedDataParallel around it (weights broadcast from rank 0)."""
    if not context.is_distributed:
        return model
    return _DataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def mean_(tensors: list[torch.Tensor], context: Context) -> list[torch.Tensor]:
    """The element-wise mean over processes of scalar tensors (one all-reduce; returns new tensors)."""
    if not context.is_distributed or not tensors:
        return tensors
    stacked = torch.stack([t.detach().float() for t in tensors])
    dist.all_reduce(stacked)
    return list(stacked / context.world_size)


def first_bad_step(flag: torch.Tensor, context: Context) -> torch.Tensor:
    """The earliest non-zero step of ``flag`` (int64 scalar, 0 = all finite) over every process (0 if none)."""
    if not context.is_distributed:
        return flag
    big = torch.iinfo(torch.long).max
    value = torch.where(flag == 0, torch.full_like(flag, big), flag).clone()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return torch.where(value == big, torch.zeros_like(value), value)


def max_int(value: int, context: Context) -> int:
    """The largest ``value`` over processes (a CPU all-reduce on the gloo group: no GPU wait); the Trainer
    passes the signal number received (0: none), so every process stops after the same step."""
    if not context.is_distributed:
        return value
    tensor = torch.tensor([int(value)])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=context.stop_group)
    return int(tensor.item())


def gather(obj, context: Context) -> list:
    """Every process's ``obj`` (picklable), in rank order, on every process (``[obj]`` when not distributed)."""
    if not context.is_distributed:
        return [obj]
    out = [None] * context.world_size
    dist.all_gather_object(out, obj, group=context.stop_group)
    return out
