"""`dvdm inspect`: decompose one video and report its motion field, residuals and exact round trip.

The report is a flat dict of plain values (the CLI prints it as aligned lines or one JSON object);
with an output folder the pictures of `visualize.py` are written there too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from dvdm.codec.decompose import DecomposeConfig, MotionDecomposition, decompose
from dvdm.errors import VideoError
from dvdm.video import read_video


def inspect_video(path: Path, *, block: int, search: int, mv_source: str, strategy: str, match: str,
                  max_frames: int | None = None, out: Path | None = None) -> dict[str, Any]:
    """Decompose the video (or frame folder) at `path`; block 0 picks the default block for its size,
    search 0 searches as far as the block is wide. `out`: also write the pictures there."""
    video = read_video(path, max_frames=max_frames)
    frames = video.frames
    if frames.shape[0] < 2:
        raise VideoError(f"{path}: has {frames.shape[0]} frame; at least 2 are needed to have motion")
    t, h, w, _ = frames.shape
    b = block or DecomposeConfig.default_block(h, w)
    config = DecomposeConfig(block=b, search=search or b, strategy=strategy, mv_source=mv_source, match=match)
    started = time.perf_counter()
    d = decompose(frames, config)
    seconds = time.perf_counter() - started
    err = int(np.abs(d.reconstruct().astype(np.int16) - frames).max())
    zero_motion = float(np.abs(frames[1:].astype(np.int16) - frames[:-1]).mean())
    report: dict[str, Any] = {
        "path": str(path), "frames": t, "height": h, "width": w, "fps": video.info.fps,
        "codec": video.info.codec, "block": b, "search": config.search, "mv_source": mv_source, "match": match,
        "strategy": strategy, "mv_grid": [int(d.mv.shape[1]), int(d.mv.shape[2])],
        "residual_mean_abs": round(float(np.abs(d.residual).mean()), 4),
        "zero_motion_residual_mean_abs": round(zero_motion, 4),
        "zero_vector_fraction": round(float(((d.mv[..., 0] == 0) & (d.mv[..., 1] == 0)).mean()), 4),
        "mean_vector_length": round(float(np.hypot(d.mv[..., 0], d.mv[..., 1]).mean()), 4),
        "roundtrip_max_abs_error": err, "decompose_seconds": round(seconds, 4),
    }
    if d.valid is not None:
        report["valid_vector_fraction"] = round(float(d.valid.mean()), 4)
    if out is not None:
        write_pictures(out, frames, d, block=b, fps=video.info.fps or 8.0, max_motion=float(config.search),
                       title=Path(path).name)
        report["outputs"] = sorted(str(p) for p in out.iterdir() if p.is_file() and not p.name.startswith("."))
    return report


def write_pictures(out: Path, frames: np.ndarray, d: MotionDecomposition, *, block: int, fps: float, max_motion: float,
                   title: str) -> None:
    """inspect.png (the whole clip), motion_field.png and residual.png (the middle frame), inspect.mp4."""
    from dvdm.codec.visualize import inspect_mp4, inspect_png, motion_field_png, residual_png

    out.mkdir(parents=True, exist_ok=True)
    mid = (frames.shape[0] - 1) // 2 + 1
    inspect_png(out / "inspect.png", frames, d.mv, d.residual, block=block, valid=d.valid, title=title)
    motion_field_png(out / "motion_field.png", frames[mid - 1], frames[mid], d.mv[mid - 1],
                     None if d.valid is None else d.valid[mid - 1], block=block, title=f"frame {mid}")
    residual_png(out / "residual.png", d.residual[mid - 1], title=f"residual of frame {mid}")
    inspect_mp4(out / "inspect.mp4", frames, d.mv, d.residual, block=block, fps=fps, max_motion=max_motion)
