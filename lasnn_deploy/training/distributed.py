"""The few places where multi-process (DistributedDataParallel) training differs from one process.

Today everything runs in one process; a torchrun launcher only has to initialise the process group
before ``train``: the sampler then splits the data by rank, metrics are summed over ranks, the model
is wrapped in DDP, and only rank 0 writes files.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main_process() -> bool:
    """Only this process writes files and shows progress bars."""
    return rank() == 0


def make_sampler(length: int, seed: int, shuffle: bool = True) -> DistributedSampler:
    """This rank's share of ``range(length)``; call ``set_epoch`` for a new, seeded order.

    ``DistributedSampler`` also serves the one-process case (one replica), so the data order
    depends only on ``seed`` and the epoch, which is what makes a resumed run bit-identical.
    """
    return DistributedSampler(range(length), num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed)


def reduce_sums(values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
    """Sums over all ranks of per-rank sums (identity in one process)."""
    if not _active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def wrap_model(module: nn.Module) -> nn.Module:
    """``module`` in DistributedDataParallel when a process group is up, else itself."""
    if not _active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module)


def barrier() -> None:
    if _active():
        dist.barrier()
