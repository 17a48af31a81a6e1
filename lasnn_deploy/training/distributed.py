"""Data-parallel training over several processes: torch.distributed, DistributedDataParallel, torchrun.

Everything that differs from one process is here. ``launched(device)`` joins the process group that
``torchrun`` describes in ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` (gloo on CPU, NCCL with one GPU
per process, ``cuda:LOCAL_RANK``); without those variables the pipeline runs as one process and every
function below is the identity. Under N processes:

- ``--batch-size B`` is the global batch: global batch ``k`` holds the same samples, in the same
  order, as batch ``k`` of one process, and process ``r`` takes its entries ``r, r + N, ...``
  (``shard``: DistributedSampler's interleaving, without its padding, so no sample is repeated and
  a one-process run sees the same batches). ``loss_weight`` rescales each process's batch-mean loss so
  that DDP's average of the gradients is the gradient of the global batch mean, even when the last
  batch does not divide by N.
- Teacher batch norm uses the statistics of the global batch (``sync_batch_norm``).
- Statistics over data are reduced exactly: sums of counts (``reduce_sums``), maxima of the
  threshold balancing (``all_max``).
- Only rank 0 writes files and shows progress (``is_main_process``); dropout and augmentation draw
  from a generator seeded per process (``seed_this_process``), whose state every checkpoint keeps
  for every process (``gather_objects``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import UserError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    return dist.get_world_size() if _active() else 1


def is_main_process() -> bool:
    """Only this process writes files and shows progress bars."""
    return rank() == 0


# -- joining the process group ---------------------------------------------------------------------
def _torchrun_environment() -> tuple[int, int, int] | None:
    """(rank, local rank, world size) set by torchrun, None without them; UserError when inconsistent."""
    values = {name: os.environ.get(name) for name in TORCHRUN_VARIABLES}
    if all(v is None for v in values.values()):
        return None
    missing = [name for name, v in values.items() if v is None]
    if missing:
        raise UserError(
            f"{', '.join(missing)} unset while {', '.join(n for n in values if n not in missing)} is set; "
            "launch with torchrun, or unset RANK, LOCAL_RANK and WORLD_SIZE to train in one process"
        )
    try:
        global_rank, local_rank, size = (int(values[name]) for name in TORCHRUN_VARIABLES)  # type: ignore[arg-type]
    except ValueError as err:
        raise UserError(
            f"RANK, LOCAL_RANK and WORLD_SIZE must be integers, got {values}; launch with torchrun"
        ) from err
    if not (size >= 1 and 0 <= global_rank < size and 0 <= local_rank <= global_rank):
        raise UserError(f"inconsistent torchrun variables {values}: need 0 <= LOCAL_RANK <= RANK < WORLD_SIZE")
    return global_rank, local_rank, size


@contextmanager
def launched(device: torch.device) -> Iterator[torch.device]:
    """Join torchrun's process group for the body of the ``with``; yield this process's device.

    Started by torchrun: gloo for ``device`` cpu, NCCL for cuda, where process ``LOCAL_RANK`` of a
    node uses ``cuda:LOCAL_RANK``; the group is destroyed on leaving. A group the caller has already
    initialised is used as it is and left open; without torchrun's variables this is one process.
    """
    env = None if _active() else _torchrun_environment()
    if env is None:
        yield device
        return
    _, local_rank, size = env
    if device.type == "cuda":
        if device.index is not None and size > 1:
            raise UserError(
                f"--device {device} puts every process on one GPU; use --device cuda (or auto): "
                "process LOCAL_RANK of each node then uses cuda:LOCAL_RANK"
            )
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index >= available:
            raise UserError(
                f"process LOCAL_RANK={local_rank} needs GPU {device} but this node has {available}; "
                "give torchrun --nproc_per_node at most the node's GPU count, or use --device cpu"
            )
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"--device {device} is not supported under torchrun; use cpu (gloo) or cuda (NCCL)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"cannot join the torchrun process group ({backend}): {str(err).splitlines()[0]}") from err
    try:
        yield device
    finally:
        dist.destroy_process_group()


def check_batch_size(batch_size: int) -> None:
    """The global batch must split evenly: every process takes ``batch_size / world_size`` samples."""
    if batch_size % world_size():
        raise UserError(
            f"--batch-size {batch_size} is the global batch and must divide by the {world_size()} "
            f"processes; use a multiple of {world_size()}"
        )


# -- data ------------------------------------------------------------------------------------------
def epoch_order(length: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch, the same in every process (DistributedSampler's shuffle)."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(length, generator=generator).tolist()


def shard(indices: Sequence[int], batch_size: int) -> list[int]:
    """This process's share of the global batches of ``batch_size`` taken from ``indices`` in order.

    Process ``r`` of ``N`` keeps entries ``r, r + N, ...``; cut into batches of ``batch_size / N``
    they are its part of every global batch (``batch_size`` divides by ``N``). A last global batch
    smaller than ``N`` would leave a process empty-handed and is dropped (with several processes
    only).
    """
    n, size = len(indices), world_size()
    tail = n % batch_size
    if 0 < tail < size:
        n -= tail
    return list(indices[rank() : n : size])


def global_batch_sizes(count: int, batch_size: int) -> list[int]:
    """Sizes of the global batches of ``shard`` over ``count`` indices."""
    sizes = [batch_size] * (count // batch_size)
    tail = count % batch_size
    return sizes + [tail] if tail >= world_size() else sizes


def loss_weight(local: int, total: int) -> float:
    """Factor on a process's batch-mean loss that makes DDP's mean gradient the global batch mean."""
    return local * world_size() / total


def share(count: int) -> range:
    """This process's contiguous share of ``count`` whole batches (evaluation, threshold balancing)."""
    return range(rank() * count // world_size(), (rank() + 1) * count // world_size())


def seed_this_process(seed: int) -> None:
    """Give each process its own dropout and augmentation draws (one process: left as it is)."""
    if world_size() > 1:
        torch.manual_seed(seed * 4099 + rank())


# -- reductions ------------------------------------------------------------------------------------
def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def reduce_sums(values: Sequence[float]) -> list[float]:
    """Sums over all processes of per-process sums (exact for integer counts below 2**53)."""
    if not _active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    dist.all_reduce(t)
    return t.tolist()


def all_max(value: float) -> float:
    """The largest ``value`` over all processes (a process with nothing to offer passes -inf)."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order (one process: ``[obj]``)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _active():
        dist.barrier()


# -- models ----------------------------------------------------------------------------------------
def wrap_model(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when a process group is up, else itself.

    DDP starts every process from rank 0's parameters and buffers and averages the gradients of
    the parameters that require one.
    """
    if not _active():
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


class CpuSyncBatchNorm(_BatchNorm):
    """Batch norm over the whole global batch, for CPU processes (gloo).

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this is its computation written with
    differentiable all-reduces of the per-channel sums, so that each process's gradient also
    carries the other processes' losses through the shared mean and variance. Outside training,
    or in one process, it is plain batch norm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        dims, shape = [0, *range(2, x.dim())], [1, -1] + [1] * (x.dim() - 2)
        count = float(reduce_sums([x.numel() // x.shape[1]])[0])
        mean = _summed(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = _summed(centred.square().sum(dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        """As ``_BatchNorm`` does: momentum (None: cumulative average), unbiased variance."""
        tracked, running_mean, running_var = self.num_batches_tracked, self.running_mean, self.running_var
        assert tracked is not None and running_mean is not None and running_var is not None  # track_running_stats
        tracked.add_(1)
        factor = 1.0 / float(tracked) if self.momentum is None else self.momentum
        running_mean.lerp_(mean, factor)
        running_var.lerp_(var * count / max(count - 1, 1.0), factor)


def _summed(t: torch.Tensor) -> torch.Tensor:
    """Sum over the processes whose gradient is the sum of the processes' gradients.

    ``torch.distributed.nn.functional.all_reduce`` did this until torch deprecated it in favour of
    the functional collectives, which carry the same backward.
    """
    from torch.distributed import _functional_collectives as fc

    world = dist.group.WORLD
    assert world is not None  # called only inside a process group
    return fc.wait_tensor(fc.all_reduce(t, "sum", world))


def sync_batch_norm(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` with every batch norm synchronised over the processes (unchanged in one process).

    GPUs use ``torch.nn.SyncBatchNorm``; CPUs ``CpuSyncBatchNorm``. The new layers share the old
    ones' parameters and buffers, so the state dict (and a saved teacher) is the same.
    """
    if world_size() == 1:
        return module
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, CpuSyncBatchNorm):
        synced = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        if module.track_running_stats:
            synced.running_mean, synced.running_var = module.running_mean, module.running_var
            synced.num_batches_tracked = module.num_batches_tracked
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, sync_batch_norm(child, device))
    return module
