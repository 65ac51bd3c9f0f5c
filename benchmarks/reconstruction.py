"""Benchmark: ED-VDM's reconstruction upper bound (paper Table 2) and residual compression (Table 5).

Clips go through the motion-vector + residual codec with the residual replaced by a lossy code, closed loop
(each residual computed against the *decoded* previous frame, as the mvres space encodes), and we report:
- residual PSNR (peak 255, on the residual values): paper Table 5, autoencoder 31.80 dB;
- clip PSNR / SSIM over frames 1..15 of 16: paper Table 2, 37.8 dB / 0.98.

Codes compared side by side, with the same latent budget (`latent_channels` numbers per block per frame):
- `mv-only`: zero residual (what motion compensation alone reconstructs);
- `pca`: the best *linear* code of that size, fitted on the training residuals (a stronger stand-in for the
  paper's DCT baseline, which kept far fewer useful coefficients: 17.08 dB);
- `autoencoder`: the residual autoencoder (dvdm.models.autoencoder), either loaded with `--autoencoder DIR`
  (a `dvdm train-ae` output, e.g. trained long on a GPU) or trained here for `--train-steps` steps;
- `lossless`: the raw residual (sanity: must be exact, PSNR at the 100 dB cap of `dvdm.metrics.psnr`).

Data, held out by construction: synthetic clips (train and test from different seeds) and the real clips of
../shared/data/real split by video (even-numbered videos train, odd-numbered test; skipped when absent),
reported for all held-out real videos (`real`) and for the held-out BAIR videos alone (`real-bair`: the
paper's reconstruction numbers are on BAIR).

    python benchmarks/reconstruction.py [--json PATH] [--size 64] [--train-steps 1500] [--autoencoder DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from decompose import real_dir, windows  # noqa: E402  (the same real-clip windows as benchmarks/decompose.py)

from dvdm.codec.decompose import DecomposeConfig, decompose  # noqa: E402
from dvdm.data.base import ClipSpec  # noqa: E402
from dvdm.data.synthetic import SyntheticSource  # noqa: E402
from dvdm.models import AutoencoderConfig, ResidualAutoencoder  # noqa: E402
from dvdm.spaces.ae_codec import AutoencoderResidualCodec  # noqa: E402
from dvdm.stages.train_ae import evaluate_roundtrip, load_autoencoder  # noqa: E402
from dvdm.train.trainer import JsonlMetrics, TrainConfig, Trainer  # noqa: E402
from bench_json import write_results  # noqa: E402
from dvdm.video.reader import read_video  # noqa: E402
from dvdm.video.sampling import sample_indices  # noqa: E402
from dvdm.video.transforms import resize  # noqa: E402


def real_clips(size: int) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(train, test, BAIR test) 16-frame real clips, split by source video so no video is on both sides; the
    third list is the held-out BAIR clips alone (the paper's R-PSNR / SSIM are measured on BAIR)."""
    real = real_dir()
    if real is None:
        print("real clips: skipped (../shared/data/real not found; set DVDM_REAL_DATA)", file=sys.stderr)
        return [], [], []
    videos: list[tuple[str, list[np.ndarray]]] = []
    for name in ("kinetics/demo.mp4", "captioned/test.mp4", "ucf101_probable/test.avi",
                 "ntu_rgbd/S001C001P001R001A001_rgb.avi"):
        if (real / name).exists():
            videos.append((name.split("/")[0], windows(read_video(real / name).frames, 16, size, 6)))
    for kind in ("bair", "kth"):
        for folder in sorted((real / kind).glob("*")):
            if folder.is_dir():
                v = read_video(folder).frames
                videos.append((kind, [resize(v[sample_indices(v.shape[0], 16, mode="stride")], size, size,
                                             mode="area")]))
    train = [c for i, (_, v) in enumerate(videos) if i % 2 == 0 for c in v]
    test = [c for i, (_, v) in enumerate(videos) if i % 2 == 1 for c in v]
    bair = [c for i, (kind, v) in enumerate(videos) if i % 2 == 1 and kind == "bair" for c in v]
    return train, test, bair


def synthetic_clips(size: int, n: int, seed: int) -> list[np.ndarray]:
    src = SyntheticSource(ClipSpec(frames=16, height=size, width=size), num_train=n, num_val=0, num_test=0,
                          seed=seed)
    return [c.frames for c in src]


def decomposed(clips: list[np.ndarray], cfg: DecomposeConfig) -> list[tuple]:
    out = []
    for frames in clips:
        d = decompose(frames, cfg)
        out.append((d.first_frame, d.mv, d.residual, None))
    return out


def fit_pca(residuals: np.ndarray, block: int, k: int):
    """Best linear code with k numbers per block: PCA of the (block*block*3)-vectors of training residuals."""
    n, h, w, c = residuals.shape
    blocks = residuals.reshape(n, h // block, block, w // block, block, c).transpose(0, 1, 3, 2, 4, 5)
    x = blocks.reshape(-1, block * block * c).astype(np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x[:: max(1, len(x) // 20000)] - mean, full_matrices=False)
    basis = vt[:k]

    def roundtrip(r: np.ndarray) -> np.ndarray:
        m, hh, ww, cc = r.shape
        b = r.reshape(m, hh // block, block, ww // block, block, cc).transpose(0, 1, 3, 2, 4, 5)
        v = b.reshape(-1, block * block * cc).astype(np.float64) - mean
        rec = (v @ basis.T) @ basis + mean
        rec = rec.reshape(m, hh // block, ww // block, block, block, cc).transpose(0, 1, 3, 2, 4, 5)
        return rec.reshape(m, hh, ww, cc).astype(np.float32)

    return roundtrip


def train_autoencoder(residuals: np.ndarray, block: int, latent: int, steps: int, out: Path) -> tuple:
    cfg = AutoencoderConfig(block=block, latent_channels=latent)
    torch.manual_seed(0)
    model = ResidualAutoencoder(cfg)
    (out / "metrics.jsonl").unlink(missing_ok=True)  # a rerun logs its own curve, not appended to the last
    data = {"residual": torch.from_numpy(residuals).permute(0, 3, 1, 2).contiguous()}

    def loss_fn(m, batch, _gen):
        o = m.loss(batch["residual"].float())
        return {"loss": o["total"], **{k: v for k, v in o.items() if k != "total"}}

    trainer = Trainer(model, loss_fn, data, TrainConfig(steps=steps, batch_size=32, lr=1e-3, ema_decay=0.99,
                                                        log_every=max(1, steps // 10)),
                      out, kind="dvdm-autoencoder", checkpoint_config={"autoencoder": cfg.to_dict()},
                      callbacks=[JsonlMetrics(out / "metrics.jsonl", steps)])  # progress on stderr
    t0 = time.perf_counter()
    trainer.fit()
    return trainer.ema.model.eval(), time.perf_counter() - t0, trainer.device


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--size", type=int, default=64, help="square clip size (block 8 up to 64, else 16)")
    ap.add_argument("--train-clips", type=int, default=96, help="synthetic training clips")
    ap.add_argument("--test-clips", type=int, default=24, help="held-out synthetic clips")
    ap.add_argument("--latent-channels", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=1500)
    ap.add_argument("--autoencoder", type=Path, help="evaluate this train-ae output instead of training one")
    ap.add_argument("--work", type=Path, default=ROOT / "work" / "bench-reconstruction")
    args = ap.parse_args()
    torch.manual_seed(0)

    block = DecomposeConfig.default_block(args.size, args.size)
    cfg = DecomposeConfig(block=block)
    real_train, real_test, bair_test = real_clips(args.size)
    train = decomposed(synthetic_clips(args.size, args.train_clips, seed=1) + real_train, cfg)
    tests = {"synthetic": decomposed(synthetic_clips(args.size, args.test_clips, seed=2), cfg)}
    if real_test:
        tests["real"] = decomposed(real_test, cfg)      # every held-out real video (mixed sources)
    if bair_test:
        tests["real-bair"] = decomposed(bair_test, cfg)  # the held-out BAIR ones alone (the paper's Table 2)
    residuals = np.concatenate([c[2] for c in train]).astype(np.float32)
    print(f"{len(train)} training clips ({len(real_train)} real), {residuals.shape[0]} residual frames; "
          f"block {block}", file=sys.stderr)

    if args.autoencoder:
        model = load_autoencoder(args.autoencoder)
        device = torch.device("cpu")
        if model.config.block != block:
            print(f"error: {args.autoencoder} was trained for block {model.config.block}, these clips use "
                  f"block {block} (--size)", file=sys.stderr)
            return 2
        ae_info = {"source": str(args.autoencoder), "train_seconds": None, "train_steps": None}
    else:
        model, seconds, device = train_autoencoder(residuals, block, args.latent_channels, args.train_steps,
                                                   args.work / f"ae-{args.size}")
        ae_info = {"source": "trained here", "train_seconds": round(seconds, 1), "train_steps": args.train_steps,
                   "device": str(device)}
    codec = AutoencoderResidualCodec(model, device)
    size = (args.size, args.size)
    k = model.config.latent_channels
    codes = {
        "mv-only": lambda r: np.zeros_like(r),
        f"pca-{k}": fit_pca(residuals, block, k),
        "autoencoder": lambda r: codec.decode(codec.encode(r), size),
        "lossless": lambda r: r,
    }
    rows = []
    for data_name, clips in tests.items():
        for code_name, fn in codes.items():
            m = evaluate_roundtrip(fn, clips, block, block)
            rows.append({"data": data_name, "code": code_name, **m})
            print(f"evaluated {code_name} on {data_name}", file=sys.stderr)

    target = {"residual_psnr": 31.8, "reconstruction_psnr": 37.8, "reconstruction_ssim": 0.98}
    head = f"{'data':10s} {'code':12s} {'clips':>5s} {'residual PSNR':>13s} {'clip PSNR':>9s} {'SSIM':>6s} {'open-loop PSNR':>14s}"
    print(head)
    print("-" * len(head))

    for r in rows:
        print(f"{r['data']:10s} {r['code']:12s} {r['eval_clips']:5d} {r['residual_psnr']:13.2f} "
              f"{r['reconstruction_psnr']:9.2f} {r['reconstruction_ssim']:6.3f} "
              f"{r['open_loop_reconstruction_psnr']:14.2f}")
    print(f"(16x{args.size}x{args.size} clips, block {block}, {k} latent numbers per block; paper targets: residual "
          f"{target['residual_psnr']} dB, clip {target['reconstruction_psnr']} dB / SSIM {target['reconstruction_ssim']}; "
          f"autoencoder: {ae_info['source']}"
          + (f", {ae_info['train_steps']} steps in {ae_info['train_seconds']} s" if ae_info["train_steps"] else "") + ")")
    if args.json:  # PSNRs are capped (dvdm.metrics.psnr), so every value is valid JSON
        write_results(args.json, "reconstruction", {"size": args.size, "block": block,
                               "latent_channels": k, "autoencoder": ae_info, "paper_targets": target,
                               "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
