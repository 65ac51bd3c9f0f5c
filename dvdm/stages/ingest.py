"""Stage `ingest`: a source's clips -> shards + manifest + summary."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from dvdm.config import IngestParams, as_dict
from dvdm.data.registry import build_source
from dvdm.data.shards import ShardWriter, clip_record
from dvdm.errors import DataError
from dvdm.utils.atomic import atomic_dir, write_json

log = logging.getLogger(__name__)


def run_ingest(params: IngestParams, out_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """Read every clip of the configured source into `out_dir` (replaced atomically). Returns the summary
    that is also written to `out_dir/summary.json`."""
    spec = params.clip_spec()
    source = build_source(params.source, spec, params.options)
    started = time.perf_counter()
    counts: dict[str, int] = {"train": 0, "val": 0, "test": 0}
    seen: dict[str, str] = {}
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, per_shard=params.clips_per_shard, compress=params.compress)
        for clip in source:
            if clip.frames.shape != (spec.frames, spec.height, spec.width, 3):
                raise DataError(f"source {params.source}: clip {clip.id} has shape {clip.frames.shape}, "
                                f"expected {(spec.frames, spec.height, spec.width, 3)}")
            if clip.id in seen:
                raise DataError(f"source {params.source}: duplicate clip id {clip.id}")
            seen[clip.id] = clip.split
            writer.add(clip.split, clip_record(clip), frames=clip.frames)
            counts[clip.split] += 1
            if progress and sum(counts.values()) % 100 == 0:
                log.info("ingested %d clips", sum(counts.values()))
        records = writer.close()
        if not records:
            raise DataError(f"source {params.source}: produced no clips (check its options and paths)")
        summary = {
            "source": params.source, "clips": len(records), "splits": counts,
            "frames": spec.frames, "height": spec.height, "width": spec.width,
            "shards": sorted({r["shard"] for r in records}),
            "seconds": round(time.perf_counter() - started, 3), "params": as_dict(params),
        }
        write_json(Path(tmp) / "summary.json", summary)
    return summary
