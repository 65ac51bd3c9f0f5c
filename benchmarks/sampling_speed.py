"""Benchmark: how fast an ED-VDM clip is generated on this CPU, and what the fast path costs in quality.

Speed (target: 16x128x128, 50 DDIM steps + decode < 2 s; at the default steps, faster than the clip plays:
16 frames at 8 fps = 2 s). The paper-size denoiser (`benchmarks/efficiency.py`'s UNet: base 64, mults 1-2-4,
attention at the lowest level, random weights: speed does not depend on them) and the residual autoencoder
(base 32) at 16x128x128 (block 16) and 16x64x64 (block 8), batch 1, one process. Rows, each the median of
`--repeats` runs:
- `ddim` 50 steps, guidance 1 and guidance 2 (the cond and uncond passes batched into one forward);
- `dpm++` (DPM-Solver++(2M)) at `--fast-steps`, guidance 1 and 2;
- the residual decode the old way (NCHW frames) beside the current channels-last one.

Quality (`--model`, a trained train-diffusion run, and `--data`, its ingested dataset): the prompt-swap
test (`dvdm.evaluate.prompt_swap`, held-out and PIL-drawn first frames x 24 prompts, same seeds) for each
sampler/steps pair in `--quality`, with direction / speed accuracy, seconds per clip, and the PSNR of every
video against the same seed's video from the reference (the first pair). FVD needs clips of >= 9 frames; the
default model's clips have 8, so this benchmark reports the prompt-swap scores only for it.

    python benchmarks/sampling_speed.py [--json PATH] [--model models/diffusion --data data/ingested]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_json import write_results  # noqa: E402
from efficiency import UNET  # noqa: E402
from onnx_vs_torch import median_time  # noqa: E402

FRAMES, FPS = 16, 8.0
PLAYBACK_SECONDS = FRAMES / FPS
TARGET_50_STEP_SECONDS = 2.0


def median_seconds(fn, repeats: int) -> float:
    return median_time(fn, repeats, warmup=1)  # warm-up: oneDNN primitive caches, allocator


def paper_size_pipeline(size: int):
    from dvdm.codec.decompose import DecomposeConfig
    from dvdm.diffusion import GaussianDiffusion
    from dvdm.models import AutoencoderConfig, ResidualAutoencoder, UNet3D, UNetConfig
    from dvdm.pipeline import VideoPipeline
    from dvdm.spaces import Normalizer, build_space
    from dvdm.spaces.ae_codec import AutoencoderResidualCodec

    torch.manual_seed(0)
    block = DecomposeConfig.default_block(size, size)
    codec = AutoencoderResidualCodec(ResidualAutoencoder(AutoencoderConfig(block=block, latent_channels=5)), "cpu")
    space = build_space("mvres", codec=codec, block=block)
    c = space.target_shape(FRAMES, size, size)[0]
    space.normalizer = Normalizer.identity(c)
    model = UNet3D(UNetConfig.from_dict({**UNET, "in_channels": c, "out_channels": c})).eval()
    diffusion = GaussianDiffusion.create(schedule="cosine", num_timesteps=1000, prediction="v")
    return VideoPipeline(model, space, diffusion, FRAMES, size, size, None, torch.device("cpu"))


def speed_rows(sizes: list[int], fast_steps: int, repeats: int) -> list[dict]:
    rows = []
    for size in sizes:
        pipe = paper_size_pipeline(size)
        first = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
        text = torch.nn.functional.normalize(torch.randn(1, UNET["text_dim"], generator=torch.Generator().manual_seed(0)),
                                             dim=-1)
        targets = pipe.sample_targets(first, None, steps=2, text=text)
        decode = median_seconds(lambda: pipe.decode(targets, first), repeats)
        raw = torch.from_numpy(pipe.space.denormalize(targets.float())[0, 2:].transpose(0, 1).numpy().copy())
        ae = pipe.space.codec.model

        def decode_nchw():  # the residual decoder as it ran before: NCHW weights and frames
            with torch.inference_mode():
                nchw = ae.to(memory_format=torch.contiguous_format)
                try:
                    nchw.decode(raw.contiguous(), (size, size)).permute(0, 2, 3, 1).numpy()
                finally:
                    ae.to(memory_format=torch.channels_last)

        decode_before = median_seconds(decode_nchw, repeats)
        rows.append({"size": size, "what": "residual decode", "sampler": "-", "steps": 0, "guidance": None,
                     "denoise_seconds": 0.0, "decode_seconds": decode, "decode_nchw_seconds": decode_before})
        for sampler, steps in (("ddim", 50), ("dpm++", fast_steps)):
            for guidance in (1.0, 2.0):
                denoise = median_seconds(lambda: pipe.sample_targets(first, None, steps=steps, text=text,
                                                                     guidance=guidance, sampler=sampler), repeats)
                rows.append({"size": size, "what": "clip", "sampler": sampler, "steps": steps, "guidance": guidance,
                             "denoise_seconds": denoise, "decode_seconds": decode,
                             "seconds": denoise + decode, "realtime_factor": PLAYBACK_SECONDS / (denoise + decode)})
        print(f"measured speed at {size}x{size}", file=sys.stderr)
    return rows


def quality_rows(model: Path, data: Path, pairs: list[tuple[str, int]], clips: int, drawn: int, guidance: float,
                 seed: int = 0) -> list[dict]:
    from dvdm.data.shards import ShardedDataset
    from dvdm.evaluate.prompt_swap import first_frame_sets, run_prompt_swap
    from dvdm.metrics.psnr import psnr
    from dvdm.pipeline import VideoPipeline
    from dvdm.stages.evaluate import held_out

    ckpt = model / "checkpoint" if (model / "checkpoint" / "config.json").is_file() else model
    pipe = VideoPipeline.from_checkpoint(ckpt, device="cpu")
    _, records, held = held_out(ShardedDataset(data), "test", clips)
    sets = first_frame_sets(records, held, clips, drawn, pipe.height, pipe.width, pipe.frames, seed=seed)
    rows, reference = [], {}
    for sampler, steps in pairs:
        row = {"sampler": sampler, "steps": steps, "guidance": guidance}
        for name, frames in sets.items():
            started = time.perf_counter()
            res = run_prompt_swap(lambda im, pr, se: pipe(im, pr, steps=steps, guidance=guidance, seeds=se,
                                                          sampler=sampler), frames, seed=seed, batch_size=24)
            videos = np.stack([v for per_frame in res["videos"] for v in per_frame])
            reference.setdefault(name, videos)
            row[name] = {"n": res["n"], "direction_accuracy": res["direction_accuracy"],
                         "speed_accuracy": res["speed_accuracy"],
                         "seconds_per_clip": (time.perf_counter() - started) / len(res["per_sample"]),
                         "psnr_vs_reference_db": float(psnr(reference[name][:, 1:], videos[:, 1:]))}
        rows.append(row)
        print(f"measured quality of {sampler} {steps}", file=sys.stderr)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--fast-steps", type=int, default=15, help="DPM-Solver++ steps of the fast path")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", type=Path, help="a trained train-diffusion run for the quality rows")
    ap.add_argument("--data", type=Path, help="its ingested dataset (held-out first frames)")
    ap.add_argument("--quality", nargs="+", default=["ddim:50", "ddim:25", "dpm++:25", "dpm++:15", "dpm++:10"],
                    help="sampler:steps pairs; the first is the reference")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--drawn", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=2.0, help="guidance of the quality rows (the service's)")
    args = ap.parse_args()
    speed = speed_rows(args.sizes, args.fast_steps, args.repeats)
    quality = []
    if args.model is not None:
        if args.data is None:
            ap.error("--model needs --data")
        pairs = [(p.split(":")[0], int(p.split(":")[1])) for p in args.quality]
        quality = quality_rows(args.model, args.data, pairs, args.clips, args.drawn, args.guidance)

    print(f"{'clip':10s} {'sampler':7s} {'steps':>5s} {'guid':>4s} {'denoise s':>9s} {'decode s':>8s} "
          f"{'total s':>7s} {'x realtime':>10s}")
    for r in speed:
        clip = f"16x{r['size']}x{r['size']}"
        if r["what"] == "residual decode":
            print(f"{clip:10s} residual decode: {r['decode_nchw_seconds']:.3f} s NCHW (before) -> "
                  f"{r['decode_seconds']:.3f} s channels-last ({r['decode_nchw_seconds'] / r['decode_seconds']:.2f}x)")
            continue
        print(f"{clip:10s} {r['sampler']:7s} {r['steps']:5d} {r['guidance']:4.1f} {r['denoise_seconds']:9.3f} "
              f"{r['decode_seconds']:8.3f} {r['seconds']:7.3f} {r['realtime_factor']:9.2f}x")
    print(f"(paper-size UNet, batch 1, CPU threads {torch.get_num_threads()}; x realtime = {PLAYBACK_SECONDS:g} s of "
          f"playback / generation time; target: 16x128x128 ddim 50 < {TARGET_50_STEP_SECONDS:g} s)")
    if quality:
        print(f"\n{'sampler':7s} {'steps':>5s} | {'set':8s} {'n':>4s} {'direction':>9s} {'speed':>6s} "
              f"{'s/clip':>6s} {'PSNR vs ref':>11s}")
        for r in quality:
            for name in ("held_out", "drawn"):
                q = r[name]
                print(f"{r['sampler']:7s} {r['steps']:5d} | {name:8s} {q['n']:4d} {q['direction_accuracy']:9.1%} "
                      f"{q['speed_accuracy']:6.1%} {q['seconds_per_clip']:6.3f} {q['psnr_vs_reference_db']:10.1f}")
        print(f"(trained model {args.model}, guidance {args.guidance}; PSNR of each video against the same seed's "
              f"{quality[0]['sampler']} {quality[0]['steps']}-step video, frames 1..T-1, 100 = identical)")
    if args.json:
        write_results(args.json, "sampling_speed", {"speed": speed, "quality": quality,
                                                    "playback_seconds": PLAYBACK_SECONDS,
                                                    "model": str(args.model) if args.model else None},
                      torch=torch.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
