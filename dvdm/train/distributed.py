"""Data-parallel training across processes launched by `torchrun` (one process per GPU, or per CPU slot).

`torchrun --nproc-per-node N` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in each
process's environment; `distributed_context()` reads them, joins the process group (NCCL between GPUs, gloo
on CPU) and pins each process to its GPU. Without those variables it returns the single-process context, so
every caller runs unchanged outside torchrun.

The trainer splits every global batch of `batch_size` clips into equal per-rank slices and averages
gradients with `DistributedDataParallel`; every random draw of a step is made for the global batch from a
generator all ranks hold in the same state (`dvdm.diffusion.noise.BatchShard`), so N processes train the
same model as one process at the same global batch (to floating-point summation order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dvdm.errors import ConfigError


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1  # processes on this machine (they share its files and page cache)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, metrics and samples, and logs."""
        return self.rank == 0

    def shard(self, global_batch: int) -> tuple[int, int]:
        """Rows [start, stop) of a global batch that this rank trains on."""
        if global_batch % self.world_size:
            raise ConfigError(f"batch_size {global_batch} does not split evenly across {self.world_size} "
                              f"processes; use a multiple of {self.world_size}")
        per_rank = global_batch // self.world_size
        return self.rank * per_rank, (self.rank + 1) * per_rank

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (logged metrics describe the global batch, not rank 0's slice)."""
        if not self.enabled or not values:
            return values
        keys = list(values)  # the same order on every rank: the loss computes them in one order
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (e.g. a failure that must stop all of them)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = DistributedContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def distributed_context(device: torch.device | None = None) -> DistributedContext:
    """The context of this process: joins the process group on first use under torchrun, else `SINGLE`."""
    if not launched_by_torchrun():
        return SINGLE
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available() and (device is None or device.type == "cuda")
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistributedContext(rank=rank, world_size=world, local_rank=local, local_world_size=local_world)


def process_device(device: torch.device, context: DistributedContext) -> torch.device:
    """Each rank's own GPU under torchrun (cuda:LOCAL_RANK); the selected device otherwise."""
    if context.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", context.local_rank)
    return device


def shutdown() -> None:
    """Leave the process group (at the end of a torchrun-launched command)."""
    if dist.is_initialized():
        dist.destroy_process_group()
