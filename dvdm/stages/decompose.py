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

from dvdm.codec.decompose import DecomposeConfig, decompose
from dvdm.codec.differences import frame_differences, integrate_differences
from dvdm.config import DecomposeParams, as_dict
from dvdm.data.shards import ShardedDataset, ShardWriter
from dvdm.errors import ConfigError, DataError
from dvdm.utils.atomic import atomic_dir, write_json


def codec_config(params: DecomposeParams, height: int, width: int) -> DecomposeConfig:
    """Resolve the automatic block size / search range for a clip size."""
    block = params.block or DecomposeConfig.default_block(height, width)
    return DecomposeConfig(block=block, search=params.search or block, strategy=params.strategy,
                           static_threshold=params.static_threshold, mv_source=params.mv_source, match=params.match)


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
    hist = np.zeros((2 * r + 1, 2 * r + 1), np.int64)
    abs_sum = sq_sum = zero_count = n_values = 0
    zero_mv = n_blocks = 0
    diff_abs_sum = 0
    worst_error = 0
    n_clips = 0
    per_shard = max(1, min(256, len(data.records)))
    with atomic_dir(out_dir) as tmp:
        writer = ShardWriter(tmp, per_shard=per_shard, compress=params.compress)
        for record, arrays in data.iter_examples():
            frames = arrays["frames"]
            if frames.shape != (t, h, w, 3):
                raise DataError(f"{in_dir}: clip {record['id']} has shape {frames.shape}, expected {(t, h, w, 3)}")
            d = decompose(frames, config)
            out = {"first_frame": d.first_frame, "mv": d.mv, "residual": d.residual}
            if params.differences != "none":
                out["diff"] = frame_differences(frames, params.differences)
                diff_abs_sum += int(np.abs(out["diff"]).sum(dtype=np.int64))
            if params.verify:
                err = int(np.abs(d.reconstruct().astype(np.int16) - frames).max())
                if "diff" in out:
                    err = max(err, int(np.abs(integrate_differences(d.first_frame, out["diff"],
                                                                    params.differences).astype(np.int16)
                                              - frames).max()))
                worst_error = max(worst_error, err)
                if err:
                    raise DataError(f"clip {record['id']}: decomposition does not invert exactly "
                                    f"(max error {err}); this is a bug, please report it")
            if d.valid is not None:
                out["valid"] = d.valid
            res = d.residual.astype(np.int64)
            abs_sum += int(np.abs(res).sum())
            sq_sum += int((res * res).sum())
            zero_count += int((res == 0).sum())
            n_values += res.size
            mvs = d.mv.reshape(-1, 2).astype(np.int64)
            np.add.at(hist, (np.clip(mvs[:, 1], -r, r) + r, np.clip(mvs[:, 0], -r, r) + r), 1)
            zero_mv += int(((mvs[:, 0] == 0) & (mvs[:, 1] == 0)).sum())
            n_blocks += mvs.shape[0]
            rec = {"id": record["id"], "split": record["split"], "caption": record["caption"],
                   "source": record["source"], "frames": t, "height": h, "width": w, "block": b,
                   "grid": [d.mv.shape[1], d.mv.shape[2]],
                   "residual_mean_abs": round(float(np.abs(res).mean()), 4),
                   "labels": record.get("labels", {})}
            writer.add(record["split"], rec, **out)
            n_clips += 1
        writer.close()
        seconds = time.perf_counter() - started
        magnitudes = np.hypot(*np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1)))
        stats = {
            "clips": n_clips, "frames": t, "height": h, "width": w,
            "codec": {"block": b, "search": r, "strategy": config.strategy, "mv_source": config.mv_source,
                      "static_threshold": config.static_threshold, "match": config.match},
            "residual": {"mean_abs": abs_sum / n_values, "mean_square": sq_sum / n_values,
                         "zero_fraction": zero_count / n_values},
            "differences": ({"reference": params.differences,
                             "mean_abs": diff_abs_sum / n_values} if params.differences != "none" else None),
            "motion_vectors": {
                "zero_fraction": zero_mv / n_blocks,
                "mean_magnitude": float((hist * magnitudes).sum() / max(1, hist.sum())),
                "histogram": {"range": [-r, r], "counts_dy_dx": hist.tolist()},
            },
            "grid": [-(-h // b), -(-w // b)],
            "roundtrip_max_abs_error": worst_error if params.verify else None,
            "seconds": round(seconds, 3), "clips_per_second": round(n_clips / max(seconds, 1e-9), 2),
            "params": as_dict(params),
        }
        write_json(Path(tmp) / "stats.json", stats)
    return stats


def headline_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    """The numbers worth comparing across runs (`dvc metrics diff`), without the histogram."""
    return {
        "clips": stats["clips"], "clips_per_second": stats["clips_per_second"],
        "residual_mean_abs": round(stats["residual"]["mean_abs"], 5),
        "residual_zero_fraction": round(stats["residual"]["zero_fraction"], 5),
        "mv_zero_fraction": round(stats["motion_vectors"]["zero_fraction"], 5),
        "mv_mean_magnitude": round(stats["motion_vectors"]["mean_magnitude"], 5),
        "roundtrip_max_abs_error": stats["roundtrip_max_abs_error"],
    }
