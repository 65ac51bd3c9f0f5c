"""Shards and manifests: how clips live on disk.

A dataset directory holds `shards/<split>-NNNNN.npz` (a few hundred clips per file: DVC and filesystems
are slow with one file per frame) and `manifest.jsonl` (one record per clip: id, source, caption, split,
frames, size, sha256 of the pixels, shard + index, provenance, labels). Directories are written into a
temporary sibling and renamed into place, so a crash never leaves a half-written dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvdm.data.base import SPLITS, Clip
from dvdm.errors import DataError

MANIFEST = "manifest.jsonl"


def clip_sha256(frames: np.ndarray) -> str:
    """Content hash of a clip's pixels (shape included, so a reshaped clip hashes differently)."""
    h = hashlib.sha256(repr((frames.shape, str(frames.dtype))).encode())
    h.update(np.ascontiguousarray(frames).tobytes())
    return h.hexdigest()


def _save_npz(path: Path, compress: bool, **arrays: np.ndarray) -> None:
    # np.savez appends ".npz" to names without it, so the temporary file keeps the suffix
    with open(path, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, **arrays)


class ShardWriter:
    """Accumulates per-split arrays and writes them as numbered `.npz` shards into `root/shards/`.

    `add(split, record, **arrays)` buffers one example; every `per_shard` examples of a split become one
    file. `close()` flushes the rest and writes the manifest. Call it inside `atomic_dir` so that the
    directory appears complete or not at all.
    """

    def __init__(self, root: Path, per_shard: int = 256, compress: bool = True):
        if per_shard < 1:
            raise ValueError(f"per_shard must be >= 1, got {per_shard}")
        self.root = Path(root)
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        self.per_shard, self.compress = per_shard, compress
        self._buffers: dict[str, list[tuple[dict[str, Any], dict[str, np.ndarray]]]] = {s: [] for s in SPLITS}
        self._counts = {s: 0 for s in SPLITS}
        self.records: list[dict[str, Any]] = []

    def add(self, split: str, record: dict[str, Any], **arrays: np.ndarray) -> None:
        self._buffers[split].append((record, arrays))
        if len(self._buffers[split]) >= self.per_shard:
            self._flush(split)

    def _flush(self, split: str) -> None:
        items = self._buffers[split]
        if not items:
            return
        name = f"shards/{split}-{self._counts[split]:05d}.npz"
        self._counts[split] += 1
        keys = items[0][1].keys()
        stacked = {k: np.stack([a[k] for _, a in items]) for k in keys}
        ids = np.array([r["id"] for r, _ in items])
        _save_npz(self.root / name, self.compress, ids=ids, **stacked)
        for i, (record, _) in enumerate(items):
            self.records.append({**record, "shard": name, "index": i})
        self._buffers[split] = []

    def close(self) -> list[dict[str, Any]]:
        for split in SPLITS:
            self._flush(split)
        with open(self.root / MANIFEST, "w") as fh:
            for record in self.records:
                fh.write(json.dumps(record, sort_keys=False) + "\n")
        return self.records


def clip_record(clip: Clip) -> dict[str, Any]:
    """The manifest record of a clip (without shard/index)."""
    t, h, w, _ = clip.frames.shape
    return {"id": clip.id, "source": clip.source, "caption": clip.caption, "split": clip.split,
            "frames": t, "height": h, "width": w, "sha256": clip_sha256(clip.frames),
            "provenance": clip.provenance, "labels": clip.labels}


def read_manifest(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a dataset directory, with a clear error when it is missing or malformed."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{root}: not a dvdm dataset directory (no {MANIFEST}); run the previous stage first")
    records = []
    with open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path} line {line_no}: not valid JSON ({exc.msg})") from None
    return records


@dataclass
class ShardedDataset:
    """Read access to a shard directory: records, and arrays loaded one shard at a time."""

    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.records = read_manifest(self.root)

    def __len__(self) -> int:
        return len(self.records)

    def splits(self) -> dict[str, int]:
        counts = {s: 0 for s in SPLITS}
        for r in self.records:
            counts[r["split"]] += 1
        return counts

    def _by_shard(self, split: str | None) -> dict[str, list[dict[str, Any]]]:
        by_shard: dict[str, list[dict[str, Any]]] = {}
        for r in self.records:
            if split is None or r["split"] == split:
                by_shard.setdefault(r["shard"], []).append(r)
        return by_shard

    def ordered_records(self, split: str | None = None) -> list[dict[str, Any]]:
        """The records of a split in the order `iter_examples` yields their clips (without reading a shard)."""
        return [r for records in self._by_shard(split).values() for r in records]

    def iter_shards(self, split: str | None = None, start: int = 0, stop: int | None = None,
                    keys: Iterable[str] | None = None) -> Iterator[tuple[list[dict[str, Any]], dict[str, np.ndarray]]]:
        """Yield (records, arrays) per shard, in manifest order; with `start`/`stop`, only the examples at those
        positions of `ordered_records(split)`, and no shard that holds none of them is read; with `keys`, only
        those arrays are decompressed (a shard holds up to `clips_per_shard` clips of each)."""
        position = 0
        for name, records in self._by_shard(split).items():
            lo, hi = max(start - position, 0), len(records) if stop is None else min(stop - position, len(records))
            position += len(records)
            if lo >= hi:
                continue
            records = records[lo:hi]
            path = self.root / name
            if not path.is_file():
                raise DataError(f"{self.root}: shard {name} listed in the manifest is missing")
            try:
                with np.load(path, allow_pickle=False) as z:
                    wanted = [k for k in z.files if k != "ids" and (keys is None or k in keys)]
                    ids = list(z["ids"])
                    arrays = {k: z[k] for k in wanted}
            except (OSError, ValueError, KeyError) as exc:
                raise DataError(f"{path}: unreadable shard ({exc})") from None
            order = [ids.index(r["id"]) for r in records]
            if order == list(range(len(ids))):  # the whole shard in its own order: no copy
                yield records, arrays
            else:
                yield records, {k: v[order] for k, v in arrays.items()}

    def iter_examples(self, split: str | None = None, start: int = 0, stop: int | None = None,
                      keys: Iterable[str] | None = None) -> Iterator[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """(record, arrays) per clip in `ordered_records(split)` order (positions `start` to `stop`; arrays
        `keys`, default all)."""
        for records, arrays in self.iter_shards(split, start, stop, keys):
            for i, record in enumerate(records):
                yield record, {k: v[i] for k, v in arrays.items()}
