"""Benchmark: the paper's two claims, side by side on this machine, with seeds and spreads.

(a) D-VDM (diff) vs pixel VDM (rgb): the same UNet, the same data, the same optimizer settings and the same
    number of steps. Both spaces put a 3-channel tensor on the full frame grid, so a step costs the same:
    equal steps are also equal wall time (the table shows the seconds, so this can be checked).
(b) ED-VDM (mvres) vs D-VDM at the same number of steps, with the cost of each (training seconds, seconds
    per step, sampling seconds per clip; mvres also trains its residual autoencoder once per seed).

The clip is small enough that pixel spaces train a few hundred steps here: synthetic moving shapes at 32x32
with 9 frames (I3D's minimum; 6 px objects so the quickest motion stays inside). Every space x seed is
evaluated by the `evaluate` stage on the same held-out clips with the same sampling seeds: FVD/KVD (I3D on
9-frame clips, so not comparable with the paper's 16-frame numbers), PSNR/SSIM, warping error (temporal
consistency), motion-following on the clips' own captions, and the prompt-swap test (every held-out first
frame x 24 prompts). The table gives mean +- standard deviation over seeds.

    python benchmarks/quality.py [--seeds 0 1 2] [--steps 300] [--json benchmarks/results/quality.json]

A pixel-space training step of this small UNet (base 16) on 9x32x32 clips takes ~1 s at batch 8 on this 2-core
CPU, so the defaults (3 seeds x 300 steps at batch 4) keep the whole run near 20 minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dvdm.config import DecomposeParams, EvaluateParams, IngestParams, TrainAEParams, TrainParams  # noqa: E402
from dvdm.stages.decompose import run_decompose  # noqa: E402
from dvdm.stages.evaluate import run_evaluate  # noqa: E402
from dvdm.stages.ingest import run_ingest  # noqa: E402
from dvdm.stages.train_ae import run_train_ae  # noqa: E402
from dvdm.spaces import SPACES, space_class  # noqa: E402
from dvdm.stages.train_diffusion import run_train_diffusion  # noqa: E402
from bench_json import write_results  # noqa: E402

# the paper's claims, pairwise: D-VDM against the VDM baseline, ED-VDM against D-VDM
CLAIMS = (("diff", "rgb"), ("mvres", "diff"))
UNET = {"base_channels": 16, "channel_mults": [1, 2], "num_res_blocks": 1, "spatial_attention": [False, False],
        "temporal_attention": True, "attention_heads": 4, "attention_head_dim": 16, "cond_drop_prob": 0.1,
        "text_whitening": True}
METRICS = ("fvd", "kvd", "psnr", "ssim", "warping_error", "direction_accuracy", "speed_accuracy",
           "swap_direction_accuracy", "swap_speed_accuracy", "train_seconds", "seconds_per_step",
           "sample_seconds_per_clip")


def _shown(path: Path) -> str:
    """A path as the JSON keeps it: relative to the repository when inside it (no build-machine paths)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def run_seed(seed: int, args, data: Path, dec: Path, evaluate: EvaluateParams) -> list[dict]:
    work = args.work / f"seed{seed}"
    ae_dir = work / "autoencoder"
    ae = run_train_ae(TrainAEParams(steps=args.ae_steps, batch_size=16, base_channels=16, seed=seed,
                                    log_every=10**9, eval_clips=4), dec, ae_dir)
    rows = []
    for space in args.spaces:
        params = TrainParams(space=space, steps=args.steps, batch_size=args.batch_size, lr=1e-3, warmup_steps=50,
                             lr_schedule="cosine", ema_decay=0.99, seed=seed, log_every=10**9, sample_steps=10,
                             unet=dict(UNET))
        t = run_train_diffusion(params, data, work / space, autoencoder_dir=ae_dir if space_class(space).needs_codec else None)
        m = run_evaluate(evaluate, work / space, data, work / f"eval-{space}")
        row = {"space": space, "seed": seed, "train_steps": t["steps"], "train_seconds": t["train_seconds"],
               "seconds_per_step": t["train_seconds"] / t["steps"],
               "autoencoder_seconds": ae["train_seconds"] if space_class(space).needs_codec else 0.0, "n_test": m["n_clips"],
               **{k: m.get(k) for k in METRICS if k not in ("train_seconds", "seconds_per_step")},
               "fvd_skipped": m.get("fvd_skipped")}
        rows.append(row)
        print(f"[seed {seed}] {space}: {t['steps']} steps in {t['train_seconds']:.0f}s, FVD {row['fvd']}, "
              f"swap direction {row['swap_direction_accuracy']}", file=sys.stderr, flush=True)
    return rows


def summarize(rows: list[dict], spaces) -> dict[str, dict[str, list[float]]]:
    """{space: {metric: [mean, std, n]}} over seeds (None values skipped)."""
    out = {}
    for space in spaces:
        mine = [r for r in rows if r["space"] == space]
        out[space] = {}
        for k in METRICS:
            vals = [r[k] for r in mine if r.get(k) is not None]
            if vals:
                out[space][k] = [float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                                 len(vals)]
    return out


def verdicts(summary: dict) -> list[str]:
    """Plain statements of what held, judged by mean +- std (no overlap of mean +- 1 std = a difference)."""
    def cmp(a: str, b: str, metric: str, lower_better: bool) -> str:
        if metric not in summary.get(a, {}) or metric not in summary.get(b, {}):
            return f"{metric}: not measured"
        (ma, sa, _), (mb, sb, _) = summary[a][metric], summary[b][metric]
        better = ma < mb if lower_better else ma > mb
        separated = abs(ma - mb) > sa + sb
        word = ("better than" if better else "worse than") if separated else "within noise of"
        return f"{metric}: {a} {ma:.4g}+-{sa:.2g} is {word} {b} {mb:.4g}+-{sb:.2g}"

    lines = []
    for a, b in CLAIMS:
        if a in summary and b in summary:
            lines.append(f"{a} vs {b}: " + "; ".join(cmp(a, b, m, lo) for m, lo in (
                ("fvd", True), ("ssim", False), ("warping_error", True), ("swap_direction_accuracy", False))))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    ap.add_argument("--steps", type=int, default=300, help="training steps per space and seed")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--ae-steps", type=int, default=150, help="residual autoencoder steps (mvres)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--train-clips", type=int, default=512)
    ap.add_argument("--test-clips", type=int, default=8)
    ap.add_argument("--swap-clips", type=int, default=2, help="held-out first frames of the prompt-swap test")
    ap.add_argument("--sample-steps", type=int, default=25, help="DDIM sampling steps at evaluation")
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "bench-quality")
    args = ap.parse_args()
    started = time.perf_counter()
    data, dec = args.work / "ingested", args.work / "decomposed"
    ingest = IngestParams(frames=args.frames, height=args.size, width=args.size, options={
        "num_train": args.train_clips, "num_val": 4, "num_test": args.test_clips, "seed": 0,
        "second_object_prob": 0.0, "textured_background_prob": 0.5, "object_size": 12 * 32 // args.size})
    run_ingest(ingest, data)
    run_decompose(DecomposeParams(), data, dec)
    evaluate = EvaluateParams(max_clips=args.test_clips, steps=args.sample_steps, batch_size=16, grid_clips=4,
                              fvd_frames=args.frames, prompt_swap_clips=args.swap_clips, prompt_swap_drawn=0,
                              prompt_swap_guidance=0.0)
    rows = []
    for seed in args.seeds:
        rows += run_seed(seed, args, data, dec, evaluate)
    summary = summarize(rows, args.spaces)

    cols = ("fvd", "ssim", "warping_error", "direction_accuracy", "swap_direction_accuracy", "swap_speed_accuracy",
            "seconds_per_step", "sample_seconds_per_clip")
    head = f"{'space':6s} " + " ".join(f"{c.replace('_accuracy', '').replace('_', ' '):>17s}" for c in cols)
    print(head)
    print("-" * len(head))
    for space in args.spaces:
        cells = []
        for c in cols:
            v = summary[space].get(c)
            cells.append(f"{'-':>17s}" if v is None else f"{v[0]:>9.4g} +-{v[1]:<6.2g}")
        print(f"{space:6s} " + " ".join(cells))
    lines = verdicts(summary)
    print("\n".join(lines))
    print(f"({len(args.seeds)} seeds x {args.steps} steps, batch {args.batch_size}, same UNet; synthetic "
          f"{args.frames}x{args.size}x{args.size}, {args.train_clips} training clips, {args.test_clips} held-out; "
          f"FVD on {args.frames}-frame clips; total {time.perf_counter() - started:.0f} s)")
    if args.json:
        write_results(args.json, "quality", {"unet": UNET, "args": {k: (_shown(v) if isinstance(v, Path) else v)
                                                                               for k, v in vars(args).items()},
                               "rows": rows, "summary": summary, "verdicts": lines})
    return 0


if __name__ == "__main__":
    sys.exit(main())
