"""Benchmark: VDM (rgb) vs D-VDM (diff) vs ED-VDM (mvres) at the same compute budget, on the same data.

Each space trains the same UNet for the same wall-clock budget on this machine (ED-VDM's residual
autoencoder is trained once beforehand and its time is reported separately), then all three are evaluated
by the `evaluate` stage on the same held-out clips with the same seeds: FVD, KVD, PSNR, SSIM,
motion-following (synthetic), warping error, sampling time per clip. Then the same on the real BAIR
fixtures of ../shared/data/real (64x64, 4 train / 4 test sequences: tiny, so FVD there is mostly noise).

    python benchmarks/quality.py [--json PATH] [--budget 300] [--bair-budget 120] [--work DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from decompose import real_dir  # noqa: E402

from dvdm.config import DecomposeParams, EvaluateParams, IngestParams, TrainAEParams, TrainParams  # noqa: E402
from dvdm.stages.decompose import run_decompose  # noqa: E402
from dvdm.stages.evaluate import run_evaluate  # noqa: E402
from dvdm.stages.ingest import run_ingest  # noqa: E402
from dvdm.stages.train_ae import run_train_ae  # noqa: E402
from dvdm.stages.train_diffusion import run_train_diffusion  # noqa: E402
from dvdm.utils.atomic import write_json  # noqa: E402

SPACES = ("rgb", "diff", "mvres")
UNET = {"base_channels": 32, "channel_mults": [1, 2, 2], "num_res_blocks": 1,
        "spatial_attention": [False, False, True], "temporal_attention": True, "attention_heads": 4,
        "attention_head_dim": 16, "cond_drop_prob": 0.1}
COLUMNS = ("fvd", "kvd", "psnr", "ssim", "motion_accuracy", "direction_accuracy", "warping_error",
           "sample_seconds_per_clip")


def bair_split_folder(work: Path) -> Path | None:
    """{train,test}/<seq> links to the BAIR fixtures: half the sequences for training, half held out."""
    real = real_dir()
    seqs = sorted(p for p in (real / "bair").glob("*") if p.is_dir()) if real else []
    if len(seqs) < 4:
        return None
    root = work / "bair-split"
    for i, seq in enumerate(seqs):
        dst = root / ("train" if i % 2 == 0 else "test") / seq.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            dst.symlink_to(seq.resolve())
    return root


def run_dataset(name: str, ingest: IngestParams, budget: float, ae_budget: float, work: Path,
                evaluate: EvaluateParams, batch_size: int) -> list[dict]:
    data, dec = work / name / "ingested", work / name / "decomposed"
    summary = run_ingest(ingest, data)
    print(f"[{name}] ingested {summary['clips']} clips {summary['splits']}", file=sys.stderr)
    run_decompose(DecomposeParams(), data, dec)
    ae = run_train_ae(TrainAEParams(steps=10**9, max_seconds=ae_budget, batch_size=16, base_channels=16,
                                    log_every=10**9, eval_clips=4), dec, work / name / "autoencoder")
    print(f"[{name}] autoencoder: {ae['steps']} steps in {ae['train_seconds']:.0f}s, residual PSNR "
          f"{ae['residual_psnr']:.2f} dB", file=sys.stderr)
    rows = []
    for space in SPACES:
        params = TrainParams(space=space, steps=10**9, max_seconds=budget, batch_size=batch_size, lr=2e-4,
                             ema_decay=0.995, log_every=10**9, sample_steps=10, unet=dict(UNET),
                             text=ingest.source == "synthetic")
        t = run_train_diffusion(params, data, work / name / space,
                                autoencoder_dir=work / name / "autoencoder" if space == "mvres" else None)
        m = run_evaluate(evaluate, work / name / space, data, work / name / f"eval-{space}")
        print(f"[{name}] {space}: {t['steps']} steps in {t['train_seconds']:.0f}s; evaluated", file=sys.stderr)
        rows.append({"data": name, "space": space, "train_steps": t["steps"], "train_seconds": t["train_seconds"],
                     "autoencoder_seconds": ae["train_seconds"] if space == "mvres" else 0.0,
                     "n_test": m["n_clips"], **{k: m.get(k) for k in COLUMNS},
                     "fvd_skipped": m.get("fvd_skipped")})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--budget", type=float, default=300.0, help="training seconds per space (synthetic)")
    ap.add_argument("--bair-budget", type=float, default=120.0, help="training seconds per space (BAIR); 0 = skip")
    ap.add_argument("--ae-budget", type=float, default=60.0, help="residual autoencoder training seconds")
    ap.add_argument("--train-clips", type=int, default=256)
    ap.add_argument("--test-clips", type=int, default=16)
    ap.add_argument("--steps", type=int, default=25, help="DDIM sampling steps at evaluation")
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "bench-quality")
    args = ap.parse_args()
    started = time.perf_counter()
    evaluate = EvaluateParams(max_clips=args.test_clips, steps=args.steps, batch_size=4, grid_clips=4)
    synthetic = IngestParams(options={"num_train": args.train_clips, "num_val": 4, "num_test": args.test_clips,
                                      "seed": 0})
    rows = run_dataset("synthetic", synthetic, args.budget, args.ae_budget, args.work, evaluate, batch_size=8)
    bair = bair_split_folder(args.work) if args.bair_budget > 0 else None
    if bair is not None:
        ingest = IngestParams(source="bair", options={"root": str(bair)})
        rows += run_dataset("bair", ingest, args.bair_budget, args.ae_budget / 2, args.work,
                            dataclasses.replace(evaluate, max_clips=0), batch_size=2)
    elif args.bair_budget > 0:
        print("BAIR: skipped (../shared/data/real/bair not found; set DVDM_REAL_DATA)", file=sys.stderr)

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    head = (f"{'data':9s} {'space':6s} {'steps':>6s} {'train s':>7s} {'N':>3s} {'FVD':>8s} {'KVD':>8s} "
            f"{'PSNR':>6s} {'SSIM':>6s} {'motion':>6s} {'dir':>5s} {'warp':>6s} {'s/clip':>6s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['data']:9s} {r['space']:6s} {r['train_steps']:6d} {r['train_seconds']:7.0f} {r['n_test']:3d} "
              f"{f(r['fvd'], '8.1f'):>8s} {f(r['kvd'], '8.3f'):>8s} {f(r['psnr'], '6.2f'):>6s} "
              f"{f(r['ssim'], '6.3f'):>6s} {f(r['motion_accuracy'], '6.2f'):>6s} "
              f"{f(r['direction_accuracy'], '5.2f'):>5s} {f(r['warping_error'], '6.2f'):>6s} "
              f"{f(r['sample_seconds_per_clip'], '6.2f'):>6s}")
    print(f"(same UNet and {args.budget:.0f} s of training per space on synthetic 16x64x64, {args.bair_budget:.0f} s "
          f"on BAIR; mvres also trained its residual autoencoder first; {args.steps} DDIM steps; total "
          f"{time.perf_counter() - started:.0f} s)")
    if args.json:
        write_json(args.json, {"benchmark": "quality", "unet": UNET, "budget_seconds": args.budget,
                               "bair_budget_seconds": args.bair_budget, "rows": rows,
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "load_average": os.getloadavg()[0]}})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
