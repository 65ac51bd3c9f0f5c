"""The training set on disk (`dvdm.train.shared_data`): shares, rows written by several processes, normalised in
place, and what the stages hand the trainer. Processes are simulated by threads with a real barrier (the
torchrun path itself is tests/test_distributed_training.py)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dvdm.train.distributed import SINGLE, DistributedContext
from dvdm.train.shared_data import RowSpec, local_share, training_arrays


def ingested(root: Path, clips: int = 6):
    """A small synthetic training set (16x16, 5 frames), written by the ingest stage; shards of 3 clips."""
    from dvdm.config import IngestParams
    from dvdm.data.shards import ShardedDataset
    from dvdm.stages.ingest import run_ingest

    params = IngestParams(frames=5, height=16, width=16, clips_per_shard=3,
                          options={"num_train": clips, "num_val": 1, "num_test": 1})
    run_ingest(params, root / "ingested")
    return ShardedDataset(root / "ingested")


def tiny_stage_data(root: Path) -> Path:
    """`ingested` and its `decomposed` clips under `root`."""
    from dvdm.config import DecomposeParams
    from dvdm.stages.decompose import run_decompose

    ingested(root)
    run_decompose(DecomposeParams(), root / "ingested", root / "decomposed")
    return root


@given(st.integers(0, 200), st.integers(1, 9))
def test_the_local_shares_cover_every_item_once_in_order(count, processes):
    shares = [local_share(count, DistributedContext(rank=k, world_size=processes, local_rank=k,
                                                    local_world_size=processes)) for k in range(processes)]
    assert [i for share in shares for i in share] == list(range(count))
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


@dataclass(frozen=True)
class ThreadContext(DistributedContext):
    """A process of a run simulated by a thread: a real barrier, broadcast through a shared box."""

    sync: threading.Barrier = field(default=None, compare=False)  # type: ignore[assignment]
    box: list = field(default_factory=list, compare=False)

    def barrier(self) -> None:
        self.sync.wait(timeout=30)

    def broadcast(self, obj):
        if self.is_main:
            self.box[:] = [obj]
        self.barrier()
        value = self.box[0]
        self.barrier()  # nobody overwrites the box before everyone has read it
        return value


def run_as_processes(n: int, body) -> list:
    """`body(context)` on n threads that act as the n processes of one machine; their results in rank order."""
    barrier, box, results, errors = threading.Barrier(n), [], [None] * n, []

    def one(k: int) -> None:
        try:
            results[k] = body(ThreadContext(rank=k, world_size=n, local_rank=k, local_world_size=n, sync=barrier,
                                            box=box))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    return results


def test_processes_write_their_own_rows_and_read_every_row(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    rows = 11
    expected = np.arange(rows * 6, dtype=np.float32).reshape(rows, 2, 3)

    def body(context):
        with training_arrays({"x": RowSpec((2, 3), "float32")}, rows, context) as store:
            for row in store.mine:
                store.write("x", row, expected[row])
            arrays = store.arrays()
            folder = store.folder
            return list(store.mine), np.array(arrays["x"]), folder

    results = run_as_processes(3, body)
    assert sorted(r for mine, _, _ in results for r in mine) == list(range(rows))
    for _, seen, folder in results:
        np.testing.assert_array_equal(seen, expected)
        assert folder.parent == tmp_path
    assert not list(tmp_path.glob("dvdm-train-data-*"))  # removed when the stage is done


def test_a_row_of_the_wrong_shape_is_refused_and_the_folder_still_goes(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ValueError, match=r"row 1 has shape \(3,\), every row has \(2,\)"):
        with training_arrays({"x": RowSpec((2,), "int16")}, 4, SINGLE) as store:
            store.write("x", 0, np.zeros(2, np.int16))
            store.write("x", 1, np.zeros(3, np.int16))
    assert not list(tmp_path.glob("dvdm-train-data-*"))


def test_encoding_splits_the_clips_and_normalises_as_one_process_would(tmp_path):
    """Two processes encode half the clips each; the rows equal one process's, normalised with statistics
    fitted on all of them, and each clip was encoded once."""
    from dvdm.spaces import build_space
    from dvdm.stages.train_diffusion import encode_training_set, training_specs

    data = ingested(tmp_path, clips=7)
    first = data.records[0]
    clip = (first["frames"], first["height"], first["width"])
    encoded: list[str] = []

    class CountingSpace:
        def __init__(self):
            self.inner = build_space("diff")

        def encode(self, frames):
            encoded.append(frames.tobytes()[:64].hex())
            return self.inner.encode(frames)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __setattr__(self, name, value):
            if name == "inner":
                object.__setattr__(self, name, value)
            else:
                setattr(self.inner, name, value)

    def body(context):
        space = CountingSpace()
        with training_arrays(training_specs(space.inner, clip), 7, context) as store:
            encode_training_set(store, data, space)
            arrays = store.arrays()
            return np.array(arrays["x0"]), np.array(arrays["first_frame"]), space.inner.normalizer.state()

    two = run_as_processes(2, body)
    assert len(encoded) == 7  # each clip once, by one of the two
    encoded.clear()
    (one_x0, one_first, one_stats), = run_as_processes(1, body)
    for x0, first_frames, stats in two:
        np.testing.assert_array_equal(x0, one_x0)
        np.testing.assert_array_equal(first_frames, one_first)
        assert stats == one_stats
    space = build_space("diff")
    raws = [space.encode(a["frames"]) for _, a in data.iter_examples("train")]
    space.fit_normalizer(raws)
    np.testing.assert_array_equal(one_x0, np.stack([space.normalize(r) for r in raws]))  # as in memory


def test_the_training_stages_hand_the_trainer_memory_maps(tmp_path, monkeypatch):
    """Neither stage gives the trainer the training set in memory."""
    from dvdm.stages import train_ae, train_diffusion

    seen: dict[str, dict] = {}

    class Stop(Exception):
        pass

    def capture(stage):
        def trainer(model, loss_fn, data, *args, **kwargs):
            seen[stage] = dict(data)
            raise Stop
        return trainer

    project = tiny_stage_data(tmp_path)
    monkeypatch.setattr(train_ae, "Trainer", capture("ae"))
    monkeypatch.setattr(train_diffusion, "Trainer", capture("diffusion"))
    from dvdm.config import TrainAEParams, TrainParams

    with pytest.raises(Stop):
        train_ae.run_train_ae(TrainAEParams(steps=1), project / "decomposed", tmp_path / "ae")
    with pytest.raises(Stop):
        train_diffusion.run_train_diffusion(TrainParams(space="diff", steps=1, text=False), project / "ingested",
                                            tmp_path / "diffusion")
    assert set(seen["diffusion"]) == {"x0", "first_frame"}
    for arrays in seen.values():
        for key, values in arrays.items():
            assert isinstance(values, np.memmap), key
    assert seen["ae"]["residual"].dtype == np.int16 and seen["ae"]["residual"].shape[1] == 3
    assert seen["diffusion"]["first_frame"].dtype == np.uint8


def test_train_ae_rows_are_every_residual_frame_in_order(tmp_path):
    from dvdm.data.shards import ShardedDataset
    from dvdm.stages.train_ae import residual_rows, write_residuals

    data = ShardedDataset(Path(tiny_stage_data(tmp_path)) / "decomposed")
    records = data.ordered_records("train")
    first = data.records[0]
    with training_arrays({"residual": RowSpec((3, first["height"], first["width"]), "int16")},
                         residual_rows(records)[-1], SINGLE) as store:
        write_residuals(store, data, records, residual_rows(records))
        rows = np.array(store.arrays()["residual"])
    expected = np.concatenate([a["residual"] for _, a in data.iter_examples("train")]).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(rows, expected)


def test_a_full_disk_is_a_clear_error_before_any_row_is_written(tmp_path, monkeypatch):
    """The arrays' blocks are reserved up front (a write through a map into a sparse file on a full disk would
    kill the process with SIGBUS); running out of room names TMPDIR and the sizes, and leaves nothing behind."""
    import errno
    import os
    import tempfile

    from dvdm.errors import DvdmError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DvdmError, match=r"no room for the training arrays .*No space left on device.*need 8 MB "
                                        r"for x, .* MB is free; point TMPDIR at a larger disk"):
        with training_arrays({"x": RowSpec((1024,), "float64")}, 1024, SINGLE):
            pass
    assert not list(tmp_path.glob("dvdm-train-data-*"))
