"""Benchmark: what changing the target space alone buys (paper Table 4 and the "110x" claim).

The same UNet configuration (only input/output channels differ) is measured for the three spaces, at
16x128x128x3 and 16x64x64x3 clips, batch 1:
- values of the diffusion target per clip, and the ratio to rgb;
- denoiser training FLOPs per clip (forward + backward, `torch.utils.flop_counter`), whole denoiser and
  without the first-frame encoder (the paper counts the 3D-UNet);
- wall-clock training step (forward + backward + AdamW), median of several steps;
- peak memory of a training step (CUDA: max allocated; CPU: peak RSS growth of a fresh process);
- time to sample one clip with 50 DDIM steps, decoding included (mvres: autoencoder + motion compensation);
  for mvres also under bfloat16 autocast (`precision="bf16"`) where the CPU has bf16 instructions.
Each (space, size) runs in its own subprocess so memory peaks do not mix.

    python benchmarks/efficiency.py [--json PATH] [--sizes 128 64] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASELINE = "rgb"  # the paper's pixel-space VDM: every ratio is against it
UNET = {"base_channels": 64, "channel_mults": [1, 2, 4], "num_res_blocks": 1,
        "spatial_attention": [False, False, True], "temporal_attention": True, "attention_heads": 4,
        "attention_head_dim": 32, "text_dim": 384}


def bf16_fast() -> bool:
    """Whether this CPU has bfloat16 dot-product instructions (AVX512-BF16 or AMX), or a GPU is used."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(space_name: str, size: int, steps: int, sample_steps: int, sample_budget: float,
           probe_steps: int) -> dict:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dvdm.codec.decompose import DecomposeConfig
    from dvdm.diffusion import GaussianDiffusion
    from dvdm.models import AutoencoderConfig, ResidualAutoencoder, UNet3D, UNetConfig
    from dvdm.pipeline import VideoPipeline
    from dvdm.spaces import Normalizer, build_space, space_class
    from dvdm.spaces.ae_codec import AutoencoderResidualCodec

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frames = 16
    block = DecomposeConfig.default_block(size, size)
    codec = None
    if space_class(space_name).needs_codec:
        codec = AutoencoderResidualCodec(ResidualAutoencoder(AutoencoderConfig(block=block, latent_channels=5)), device)
    space = build_space(space_name, codec=codec, block=block)
    c, t, h, w = space.target_shape(frames, size, size)
    model = UNet3D(UNetConfig.from_dict({**UNET, "in_channels": c, "out_channels": c})).to(device)
    x = torch.randn(1, c, t, h, w, device=device)
    tt = torch.tensor([500], device=device)
    image = torch.rand(1, 3, size, size, device=device) * 2 - 1
    text = torch.nn.functional.normalize(torch.randn(1, 384, device=device), dim=-1)

    def loss():
        return (model(x, tt, image, text) - x).square().mean()

    # Timed steps first: ru_maxrss is a process-wide high-water mark, so the baseline is taken after the
    # model exists and before any activation was ever allocated (the FLOP count below would raise it).
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    base_rss = rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else rss_mb() - base_rss)
    opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as fc:
        loss().backward()
    flops = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc_enc:
        model.image_encoder(image, (h, w)).square().mean().backward()
    enc_flops = fc_enc.get_total_flops()
    model.zero_grad(set_to_none=True)

    space.normalizer = Normalizer.identity(c)
    diffusion = GaussianDiffusion.create(schedule="cosine", num_timesteps=1000, prediction="v")
    pipe = VideoPipeline(model.eval(), space, diffusion, frames, size, size, None, device)
    first = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    t0 = time.perf_counter()
    pipe.sample_targets(first, None, steps=2, text=text)  # warm-up, and the per-step cost
    per_step = (time.perf_counter() - t0) / 2
    # A full 50-step rgb sample at 128x128 takes many minutes on 2 CPU cores: beyond the budget the
    # denoising time is extrapolated from `probe` timed steps, and the row says so.
    estimated = per_step * sample_steps > sample_budget
    run_steps = min(sample_steps, probe_steps) if estimated else sample_steps
    t0 = time.perf_counter()
    targets = pipe.sample_targets(first, None, steps=run_steps, text=text)
    t_denoise = (time.perf_counter() - t0) * sample_steps / run_steps
    t0 = time.perf_counter()
    pipe.decode(targets, first)
    t_decode = time.perf_counter() - t0
    bf16 = None
    if space_class(space_name).needs_codec and bf16_fast():
        # the same sample under bfloat16 autocast (`VideoPipeline(precision="bf16")`)
        pipe_bf16 = VideoPipeline(model, space, diffusion, frames, size, size, None, device, precision="bf16")
        pipe_bf16.sample_targets(first, None, steps=2, text=text)  # warm-up
        t0 = time.perf_counter()
        targets_bf16 = pipe_bf16.sample_targets(first, None, steps=sample_steps, text=text)
        bf16_denoise = time.perf_counter() - t0
        t0 = time.perf_counter()
        pipe_bf16.decode(targets_bf16, first)
        bf16_decode = time.perf_counter() - t0
        bf16 = {"sample_seconds": bf16_denoise + bf16_decode, "sample_denoise_seconds": bf16_denoise,
                "sample_decode_seconds": bf16_decode}
    return {"space": space_name, "size": size, "target_shape": [c, t, h, w], "target_values": c * t * h * w,
            "train_gflops": flops / 1e9, "train_gflops_unet_only": (flops - enc_flops) / 1e9,
            "train_step_seconds": statistics.median(times), "peak_memory_mb": peak,
            "memory_kind": "cuda max allocated" if device.type == "cuda" else "CPU peak RSS growth",
            "sample_seconds": t_denoise + t_decode, "sample_denoise_seconds": t_denoise,
            "sample_decode_seconds": t_decode, "sample_steps": sample_steps,
            "sample_estimated_from_steps": run_steps if estimated else None, "bf16": bf16,
            "parameters": sum(p.numel() for p in model.parameters()), "device": str(device)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per space (after one warm-up)")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--sample-budget", type=float, default=60.0,
                    help="seconds; a sample predicted to take longer is timed on --probe-steps and extrapolated")
    ap.add_argument("--probe-steps", type=int, default=5)
    ap.add_argument("--worker", nargs=2, metavar=("SPACE", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.steps, args.sample_steps,
                                args.sample_budget, args.probe_steps)))
        return 0

    from dvdm.spaces import SPACES

    rows = []
    for size in args.sizes:
        for space in SPACES:  # every registered space
            r = subprocess.run([sys.executable, __file__, "--worker", space, str(size), "--steps", str(args.steps),
                                "--sample-steps", str(args.sample_steps), "--sample-budget", str(args.sample_budget),
                                "--probe-steps", str(args.probe_steps)], capture_output=True, text=True)
            if r.returncode:
                print(r.stderr, file=sys.stderr)
                return r.returncode
            row = json.loads(r.stdout.strip().splitlines()[-1])
            # Other processes on a shared machine distort wall-clock columns: keep the evidence with the row.
            row["load_average_after"] = os.getloadavg()[0]
            rows.append(row)
            print(f"measured {space} at {size}x{size}", file=sys.stderr)
    for r in rows:
        ref = next(x for x in rows if x["size"] == r["size"] and x["space"] == BASELINE)
        r["values_ratio_vs_rgb"] = ref["target_values"] / r["target_values"]
        r["flops_ratio_vs_rgb"] = ref["train_gflops"] / r["train_gflops"]
        r["flops_ratio_vs_rgb_unet_only"] = ref["train_gflops_unet_only"] / r["train_gflops_unet_only"]
        r["step_time_ratio_vs_rgb"] = ref["train_step_seconds"] / r["train_step_seconds"]
        r["memory_ratio_vs_rgb"] = ref["peak_memory_mb"] / max(r["peak_memory_mb"], 1e-9)

    head = (f"{'space':6s} {'clip':10s} {'target':>16s} {'values':>8s} {'x':>6s} {'GFLOPs':>8s} {'x':>6s} "
            f"{'UNet GF':>8s} {'x':>6s} {'step s':>8s} {'x':>7s} {'mem MB':>8s} {'x':>5s} {'sample s':>8s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['space']:6s} {'16x%dx%d' % (r['size'], r['size']):10s} {'x'.join(map(str, r['target_shape'])):>16s} "
              f"{r['target_values']:8d} {r['values_ratio_vs_rgb']:6.1f} {r['train_gflops']:8.1f} "
              f"{r['flops_ratio_vs_rgb']:6.1f} {r['train_gflops_unet_only']:8.1f} "
              f"{r['flops_ratio_vs_rgb_unet_only']:6.1f} {r['train_step_seconds']:8.3f} "
              f"{r['step_time_ratio_vs_rgb']:7.1f} {r['peak_memory_mb']:8.0f} {r['memory_ratio_vs_rgb']:5.1f} "
              f"{r['sample_seconds']:8.2f}{'*' if r['sample_estimated_from_steps'] else ''}")
    for r in rows:
        if r.get("bf16"):
            b = r["bf16"]
            print(f"{r['space']} 16x{r['size']}x{r['size']} sample, float32 vs bfloat16 autocast: denoise "
                  f"{r['sample_denoise_seconds']:.2f} vs {b['sample_denoise_seconds']:.2f} s, decode "
                  f"{r['sample_decode_seconds']:.2f} vs {b['sample_decode_seconds']:.2f} s, total "
                  f"{r['sample_seconds']:.2f} vs {b['sample_seconds']:.2f} s")
    print(f"(x = ratio vs rgb at the same size; device {rows[0]['device']}; memory = {rows[0]['memory_kind']}; "
          f"sampling = {args.sample_steps} DDIM steps + decode; * = denoising extrapolated from "
          f"{args.probe_steps} timed steps)")
    if args.json:
        from bench_json import write_results

        write_results(args.json, "efficiency", {"unet": UNET, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
