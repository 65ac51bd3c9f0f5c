"""Benchmark: our exact decomposition vs FFmpeg's libx264 (ultrafast) with motion-vector export.

Both run on the same 16-frame clips, interleaved in one process, after a warm-up:
- ours: luma + SAD block matching + int16 residuals (`dvdm.codec.decompose`, mv_source="search"), the
  full decomposition with its exact inverse;
- x264: PyAV encodes the clip with libx264 `ultrafast` (bframes=0, one I-frame) and decodes it with
  `flags2=+export_mvs`, reading the motion-vector side data of every frame. Residuals are NOT included in
  its time (which favours x264).
It also reports the mean |residual| of both motion sources (x264's vectors made dense on our block grid by
`dvdm.codec.ffmpeg_mv`, residuals by the same compensation) and of zero motion.

    python benchmarks/decompose.py [--json PATH] [--repeats 5]

Real clips come from ../shared/data/real (or $DVDM_REAL_DATA); missing ones are skipped and said so.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import av
import numpy as np

from dvdm.codec.decompose import DecomposeConfig, decompose
from dvdm.data.base import ClipSpec
from dvdm.data.synthetic import SyntheticSource
from dvdm.video import read_video, resize, sample_indices

ROOT = Path(__file__).resolve().parents[1]


def real_dir() -> Path | None:
    env = os.environ.get("DVDM_REAL_DATA")
    p = Path(env) if env else ROOT.parent / "shared" / "data" / "real"
    return p if p.is_dir() else None


def x264_motion_vectors(frames: np.ndarray) -> list:
    """libx264 ultrafast encode + decode with motion-vector export (the baseline's whole cost)."""
    t, h, w, _ = frames.shape
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.options = {"preset": "ultrafast",
                                   "x264-params": f"bframes=0:keyint={t}:min-keyint={t}:scenecut=0"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    buf.seek(0)
    out = []
    with av.open(buf) as c:
        st = c.streams.video[0]
        st.codec_context.options = {"flags2": "+export_mvs"}
        for fr in c.decode(st):
            sd = fr.side_data.get("MOTION_VECTORS")
            out.append(sd.to_ndarray() if sd is not None else None)
    if len(out) != t:
        raise RuntimeError(f"x264 round trip returned {len(out)} frames, expected {t}")
    return out


def windows(frames: np.ndarray, n: int, size: int, count: int) -> list[np.ndarray]:
    """Up to `count` non-overlapping n-frame windows, centre-cropped square and resized to size x size."""
    t, h, w, _ = frames.shape
    s = min(h, w)
    frames = frames[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    out = []
    for k in range(min(count, t // n)):
        out.append(resize(frames[k * n:(k + 1) * n], size, size, mode="area"))
    return out


def clip_sets(size: int, n_synthetic: int) -> dict[str, list[np.ndarray]]:
    sets: dict[str, list[np.ndarray]] = {}
    src = SyntheticSource(ClipSpec(frames=16, height=size, width=size), num_train=n_synthetic, num_val=0,
                          num_test=0, seed=123)
    sets["synthetic"] = [c.frames for c in src]
    real = real_dir()
    if real is None:
        print("real clips: skipped (../shared/data/real not found; set DVDM_REAL_DATA)", file=sys.stderr)
        return sets
    clips: list[np.ndarray] = []
    for name in ("kinetics/demo.mp4", "captioned/test.mp4", "ucf101_probable/test.avi"):
        p = real / name
        if p.exists():
            clips += windows(read_video(p).frames, 16, size, 6)
    for folder in sorted((real / "bair").glob("*")) + sorted((real / "kth").glob("*")):
        if folder.is_dir():
            v = read_video(folder).frames
            idx = sample_indices(v.shape[0], 16, mode="stride")
            clips.append(resize(v[idx], size, size, mode="area"))
    if clips:
        sets["real"] = clips
    return sets


def time_per_clip(fn, clips, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for c in clips:
            fn(c)
        runs.append((time.perf_counter() - t0) / len(clips))
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--synthetic", type=int, default=24, help="synthetic clips per size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 64])
    args = ap.parse_args()

    rows = []
    for size in args.sizes:
        block = DecomposeConfig.default_block(size, size)
        ours_cfg = DecomposeConfig(block=block, search=block, match="luma")  # as its JSON in the README was measured
        ff_cfg = DecomposeConfig(block=block, search=block, mv_source="ffmpeg")
        for name, clips in clip_sets(size, args.synthetic).items():
            # warm-up: numba's cached kernels load, libx264 initialises
            decompose(clips[0], ours_cfg)
            x264_motion_vectors(clips[0])
            ours_s, x264_s = [], []
            for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
                ours_s.append(time_per_clip(lambda c: decompose(c, ours_cfg), clips, 1))
                x264_s.append(time_per_clip(x264_motion_vectors, clips, 1))
            ours, x264 = statistics.median(ours_s), statistics.median(x264_s)
            res_ours, res_ff, res_zero, exact = [], [], [], True
            for c in clips:
                d = decompose(c, ours_cfg)
                exact &= bool((d.reconstruct() == c).all())
                res_ours.append(np.abs(d.residual).mean())
                f = decompose(c, ff_cfg)
                exact &= bool((f.reconstruct() == c).all())
                res_ff.append(np.abs(f.residual).mean())
                res_zero.append(np.abs(c[1:].astype(np.int16) - c[:-1]).mean())
            rows.append({
                "clips": name, "size": f"16x{size}x{size}", "n": len(clips), "block": block, "search": block,
                "ours_clips_per_s": 1 / ours, "x264_clips_per_s": 1 / x264, "ratio": x264 / ours,
                "residual_mean_abs_ours": float(np.mean(res_ours)),
                "residual_mean_abs_x264_mvs": float(np.mean(res_ff)),
                "residual_mean_abs_zero_motion": float(np.mean(res_zero)), "exact_roundtrip": exact,
            })

    header = (f"{'clips':10s} {'size':12s} {'n':>3s} {'ours clips/s':>13s} {'x264 clips/s':>13s} {'ratio':>6s} "
              f"{'|res| ours':>10s} {'|res| x264':>10s} {'|res| zero':>10s} {'exact':>5s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['clips']:10s} {r['size']:12s} {r['n']:3d} {r['ours_clips_per_s']:13.1f} "
              f"{r['x264_clips_per_s']:13.1f} {r['ratio']:6.2f} {r['residual_mean_abs_ours']:10.3f} "
              f"{r['residual_mean_abs_x264_mvs']:10.3f} {r['residual_mean_abs_zero_motion']:10.3f} "
              f"{str(r['exact_roundtrip']):>5s}")
    if args.json:
        from bench_json import write_results

        write_results(args.json, "decompose", {"rows": rows, "repeats": args.repeats}, av=av.__version__, numpy=np.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
