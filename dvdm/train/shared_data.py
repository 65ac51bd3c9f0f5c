"""The training set of a data-parallel run, shared by its processes through memory-mapped files.

Under torchrun every rank would otherwise hold its own copy of every encoded clip. Rank 0 writes each
training array once to a temporary folder; every rank then maps those files read-only and the trainer reads
just the rows of each batch, so the ranks on one host share one copy (the page cache) and a rank's resident
memory holds its batches, not the dataset. A single process keeps its tensors in memory, as before.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch

from dvdm.train.distributed import DistributedContext


@contextlib.contextmanager
def shared_training_data(data: Mapping[str, torch.Tensor],
                         context: DistributedContext) -> Iterator[Mapping[str, torch.Tensor | np.ndarray]]:
    """`data` itself in a single process; under torchrun, read-only memory maps of rank 0's copy."""
    if not context.enabled:
        yield data
        return
    folder = Path(context.broadcast(tempfile.mkdtemp(prefix="dvdm-train-data-") if context.is_main else None))
    try:
        if context.is_main:
            for key, values in data.items():
                np.save(folder / f"{key}.npy", values.detach().cpu().numpy())
        context.barrier()
        yield {key: np.load(folder / f"{key}.npy", mmap_mode="r") for key in data}
    finally:
        if context.is_main:  # the other ranks' maps stay valid: an unlinked file lives while it is mapped
            shutil.rmtree(folder, ignore_errors=True)
