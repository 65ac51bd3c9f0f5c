"""The training set on disk: equal-length arrays written a row at a time while the clips are read, and read
back by the trainer as memory maps, a batch of rows at a time.

No process holds the whole training set: a stage encodes one clip, writes its row to a `.npy` file
(`np.lib.format.open_memmap`) and moves on, and the trainer reads just the rows of each batch, so memory holds
the batches, not the dataset, whatever its size. Under torchrun the processes of one machine split the rows
(`TrainingArrays.mine`: process k of n encodes the k-th n-th, reading only the shards that hold it) and map
the same files, so the page cache keeps one copy per machine; each machine builds its own folder.

The folder lives in the system temp dir (`TMPDIR`), is removed when the stage ends, and takes the size of
the encoded set (the default preset's 1,024 clips: ED-VDM targets and first frames about 14 MB, the
autoencoder's residual frames about 180 MB).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from dvdm.errors import DvdmError
from dvdm.train.distributed import DistributedContext


@dataclass(frozen=True)
class RowSpec:
    """One row of a training array: its shape and numpy dtype."""

    shape: tuple[int, ...]
    dtype: str


def local_share(count: int, context: DistributedContext) -> range:
    """This process's contiguous share of `count` items among the processes of its machine."""
    k, n = context.local_rank, context.local_world_size
    return range(count * k // n, count * (k + 1) // n)


class TrainingArrays:
    """Arrays of `rows` rows in `folder`, one `.npy` file per key, created by `training_arrays`."""

    def __init__(self, folder: Path, rows: int, keys: list[str], context: DistributedContext) -> None:
        self.folder, self.rows, self.keys, self.context = folder, rows, keys, context
        self.mine = local_share(rows, context)  # the rows this process writes
        self._writable: dict[str, np.memmap] = {}

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def writable(self, key: str) -> np.memmap:
        """The array `key` opened for writing (any process may write any row; each writes its own)."""
        if key not in self._writable:
            self._writable[key] = np.load(self.path(key), mmap_mode="r+")
        return self._writable[key]

    def write(self, key: str, row: int, value: np.ndarray) -> None:
        target = self.writable(key)
        if value.shape != target.shape[1:]:
            raise ValueError(f"training array {key}: row {row} has shape {value.shape}, every row has "
                             f"{target.shape[1:]}")
        target[row] = value

    def sync(self) -> None:
        """Every process's writes are on disk before any process reads further."""
        for array in self._writable.values():
            array.flush()
        self.context.barrier()

    def read(self, key: str) -> np.ndarray:
        return np.load(self.path(key), mmap_mode="r")

    def arrays(self) -> dict[str, np.ndarray]:
        """The trainer's data: read-only maps of every array. Every process has mapped them when this returns,
        so the folder may go as soon as any process is done (a mapped file outlives its name)."""
        self.sync()
        self._writable.clear()
        maps = {key: self.read(key) for key in self.keys}
        self.context.barrier()
        return maps


def _allocate(path: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """An empty `.npy` file of `shape`, its blocks reserved on disk now: writing a row through a map into a
    sparse file on a full disk kills the process with SIGBUS, where reserving fails here with a clear error."""
    np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
    size = path.stat().st_size
    try:
        with open(path, "r+b") as fh:
            os.posix_fallocate(fh.fileno(), 0, size)
    except OSError as exc:
        free = shutil.disk_usage(path.parent).free
        raise DvdmError(f"no room for the training arrays in {path.parent.parent} ({exc.strerror}): they need "
                        f"{size / 2**20:.0f} MB for {path.stem}, {free / 2**20:.0f} MB is free; point TMPDIR at a "
                        f"larger disk") from None


@contextlib.contextmanager
def training_arrays(specs: Mapping[str, RowSpec], rows: int,
                    context: DistributedContext) -> Iterator[TrainingArrays]:
    """Empty arrays of `rows` rows per `specs` in a temporary folder, shared by this machine's processes."""
    # one name for the run (rank 0's), made on every machine by its first process
    folder = Path(context.broadcast(tempfile.mkdtemp(prefix="dvdm-train-data-") if context.is_main else None))
    creator = context.local_rank == 0
    try:
        if creator:
            folder.mkdir(parents=True, exist_ok=True)
            for key, spec in specs.items():
                _allocate(folder / f"{key}.npy", np.dtype(spec.dtype), (rows, *spec.shape))
        context.barrier()
        yield TrainingArrays(folder, rows, list(specs), context)
    finally:
        if creator:  # the other processes' maps stay valid: an unlinked file lives while it is mapped
            shutil.rmtree(folder, ignore_errors=True)
