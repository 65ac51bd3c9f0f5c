"""Stage `decompose`: ingested clips -> first frame + motion vectors + residuals (+ differences) + stats.

Every clip's decomposition is checked to invert exactly (`verify`), so a bug in the codec can never
silently corrupt training data. The stats JSON (a DVC metric) reports residual energy and the motion-vector
histogram; the size of each space's diffusion target is train-ae's to report (it owns the latent channels).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from dvdm.codec.decompose import DecomposeConfig, MotionDecomposition, decompose
from dvdm.codec.differences import frame_differences, integrate_differences
from dvdm.config import DecomposeParams, as_dict
from dvdm.data.shards import ShardedDataset, ShardWriter
from dvdm.errors import ConfigError, DataError
from dvdm.stages.metrics_file import headline
from dvdm.utils.atomic import atomic_dir, write_json


def codec_config(params: DecomposeParams, height: int, width: int) -> DecomposeConfig:
    """Resolve the automatic block size / search range for a clip size."""
    block = params.block or DecomposeConfig.default_block(height, width)
    return DecomposeConfig(block=block, search=params.search or block, strategy=params.strategy,
                           static_threshold=params.static_threshold, mv_source=params.mv_source, match=params.match)


class DecomposeStatistics:
    """Running totals over every clip for stats.json: residual energy, the motion-vector histogram (vectors
    clipped to the search range) and the mean absolute frame difference. Integer sums, so the order of the
    clips does not change a digit."""

    def __init__(self, search: int):
        self.search = search
        self.histogram = np.zeros((2 * search + 1, 2 * search + 1), np.int64)  # [dy, dx]
        self.clips = 0
        self.residual_abs = self.residual_square = self.residual_zeros = self.residual_values = 0
        self.zero_vectors = self.blocks = 0
        self.difference_abs = 0

    def add(self, d: MotionDecomposition, differences: np.ndarray | None) -> None:
        res = d.residual.astype(np.int64)
        self.residual_abs += int(np.abs(res).sum())
        self.residual_square += int((res * res).sum())
        self.residual_zeros += int((res == 0).sum())
        self.residual_values += res.size
        r = self.search
        mvs = d.mv.reshape(-1, 2).astype(np.int64)
        np.add.at(self.histogram, (np.clip(mvs[:, 1], -r, r) + r, np.clip(mvs[:, 0], -r, r) + r), 1)
        self.zero_vectors += int(((mvs[:, 0] == 0) & (mvs[:, 1] == 0)).sum())
        self.blocks += mvs.shape[0]
        if differences is not None:
            self.difference_abs += int(np.abs(differences).sum(dtype=np.int64))
        self.clips += 1

    def summary(self, differences: str) -> dict[str, Any]:
        """The `residual`, `differences` and `motion_vectors` sections of stats.json (`differences` is the
        reference frame of the differences, or "none")."""
        r, n = self.search, self.residual_values
        magnitudes = np.hypot(*np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1)))
        return {
            "residual": {"mean_abs": self.residual_abs / n, "mean_square": self.residual_square / n,
                         "zero_fraction": self.residual_zeros / n},
            "differences": ({"reference": differences,
                             "mean_abs": self.difference_abs / n} if differences != "none" else None),
            "motion_vectors": {
                "zero_fraction": self.zero_vectors / self.blocks,
                "mean_magnitude": float((self.histogram * magnitudes).sum() / max(1, self.histogram.sum())),
                "histogram": {"range": [-r, r], "counts_dy_dx": self.histogram.tolist()},
            },
        }


def verify_clip(clip_id: str, frames: np.ndarray, d: MotionDecomposition, diff: np.ndarray | None,
                reference: str) -> None:
    """Raise unless the decomposition (and the differences, when written) rebuild the clip exactly."""
    err = int(np.abs(d.reconstruct().astype(np.int16) - frames).max())
    if diff is not None:
        rebuilt = integrate_differences(d.first_frame, diff, reference)
        err = max(err, int(np.abs(rebuilt.astype(np.int16) - frames).max()))
    if err:
        raise DataError(f"clip {clip_id}: decomposition does not invert exactly (max error {err}); this is a "
                        f"bug, please report it")


def clip_record(record: dict[str, Any], d: MotionDecomposition, clip: tuple[int, int, int],
                block: int) -> dict[str, Any]:
    """The shard record of one decomposed clip: the ingested metadata plus its codec geometry."""
    t, h, w = clip
    return {"id": record["id"], "split": record["split"], "caption": record["caption"],
            "source": record["source"], "frames": t, "height": h, "width": w, "block": block,
            "grid": [d.mv.shape[1], d.mv.shape[2]],
            "residual_mean_abs": round(float(np.abs(d.residual.astype(np.int64)).mean()), 4),
            "labels": record.get("labels", {})}


def shard_arrays(d: MotionDecomposition, diff: np.ndarray | None) -> dict[str, np.ndarray]:
    """The arrays stored per clip; `diff` and `valid` only when there are some."""
    arrays = {"first_frame": d.first_frame, "mv": d.mv, "residual": d.residual}
    if diff is not None:
        arrays["diff"] = diff
    if d.valid is not None:
        arrays["valid"] = d.valid
    return arrays


def run_decompose(params: DecomposeParams, in_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    if params.differences not in ("first", "previous", "none"):
        raise ConfigError(f"decompose.differences must be first, previous or none, got {params.differences!r}")
    data = ShardedDataset(Path(in_dir))
    if not data.records:
        raise DataError(f"{in_dir}: the dataset has no clips")
    first = data.records[0]
    t, h, w = first["frames"], first["height"], first["width"]
    config = codec_config(params, h, w)
    b, r = config.block, config.search
    started = time.perf_counter()
    statistics = DecomposeStatistics(r)
    per_shard = max(1, min(256, len(data.records)))
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, per_shard=per_shard, compress=params.compress)
        for record, arrays in data.iter_examples():
            frames = arrays["frames"]
            if frames.shape != (t, h, w, 3):
                raise DataError(f"{in_dir}: clip {record['id']} has shape {frames.shape}, expected {(t, h, w, 3)}")
            d = decompose(frames, config)
            diff = frame_differences(frames, params.differences) if params.differences != "none" else None
            if params.verify:
                verify_clip(record["id"], frames, d, diff, params.differences)
            statistics.add(d, diff)
            writer.add(record["split"], clip_record(record, d, (t, h, w), b), **shard_arrays(d, diff))
        writer.close()
        seconds = time.perf_counter() - started
        stats = {
            "clips": statistics.clips, "frames": t, "height": h, "width": w,
            "codec": {"block": b, "search": r, "strategy": config.strategy, "mv_source": config.mv_source,
                      "static_threshold": config.static_threshold, "match": config.match},
            **statistics.summary(params.differences),
            "grid": [-(-h // b), -(-w // b)],
            # verify_clip stops the stage at the first clip that does not invert exactly
            "roundtrip_max_abs_error": 0 if params.verify else None,
            "seconds": round(seconds, 3), "clips_per_second": round(statistics.clips / max(seconds, 1e-9), 2),
            "params": as_dict(params),
        }
        write_json(Path(tmp) / "stats.json", stats)
    return stats


def headline_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """The stage's DVC metrics (`dvdm.stages.metrics_file`): the clips; the rest stays in stats.json."""
    return headline({"clips": stats["clips"]})
