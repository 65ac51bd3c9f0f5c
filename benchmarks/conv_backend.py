"""Benchmark: the denoiser's batch-1 forward with `dvdm.models.conv.Conv3d`'s oneDNN route vs PyTorch's own choice.

PyTorch's CPU heuristic sends batch-1 convolutions on small inputs to its native im2col kernel; `Conv3d` calls
oneDNN instead during inference. Same model, same inputs, one process, the two variants alternating
(`--repeats` rounds of `--calls` forwards each), medians. The efficiency benchmark's UNet config, on the grids
of ED-VDM (mvres) and of the pixel spaces.

    python benchmarks/conv_backend.py [--json PATH] [--repeats 6] [--calls 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficiency import UNET  # noqa: E402

from dvdm.models import UNet3D, UNetConfig  # noqa: E402
from dvdm.models.conv import Conv3d  # noqa: E402
from bench_json import write_results  # noqa: E402

# (label, channels, frames, grid): mvres at 128x128 or 64x64 (block 16 / 8: an 8x8 grid either way), and a
# pixel space at 32x32, where PyTorch already picks oneDNN (the route must not cost anything there)
CASES = [("mvres 16x128x128", 7, 15, 8), ("rgb 16x32x32", 3, 15, 32)]


def measure(label: str, channels: int, frames: int, grid: int, repeats: int, calls: int) -> dict:
    torch.manual_seed(0)
    model = UNet3D(UNetConfig.from_dict({**UNET, "in_channels": channels, "out_channels": channels})).eval()
    for p in model.parameters():  # trained-like weights (zero-initialised layers would skip work)
        p.data.normal_(0, 0.05)
    x = torch.randn(1, channels, frames, grid, grid)
    t = torch.tensor([500])
    text = nn.functional.normalize(torch.randn(1, 384), dim=-1)
    variants = {"pytorch": nn.Conv3d.forward, "onednn": Conv3d.forward}
    times: dict[str, list[float]] = {k: [] for k in variants}
    outputs = {}
    with torch.inference_mode():
        features = model.encode_image(torch.rand(1, 3, 64, 64) * 2 - 1, (grid, grid))
        for _ in range(repeats):
            for name, forward in variants.items():
                Conv3d.forward = forward
                try:
                    outputs[name] = model(x, t, image_features=features, text=text)  # warm-up
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        model(x, t, image_features=features, text=text)
                    times[name].append((time.perf_counter() - t0) / calls * 1000)
                finally:
                    Conv3d.forward = variants["onednn"]
    diff = (outputs["onednn"] - outputs["pytorch"]).abs().max().item()
    scale = outputs["pytorch"].abs().max().item()
    pt, dn = statistics.median(times["pytorch"]), statistics.median(times["onednn"])
    return {"case": label, "input": [1, channels, frames, grid, grid], "pytorch_ms": pt, "onednn_ms": dn,
            "speedup": pt / dn, "max_abs_difference": diff, "output_scale": scale,
            "pytorch_runs_ms": times["pytorch"], "onednn_runs_ms": times["onednn"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    rows = [measure(*case, repeats=args.repeats, calls=args.calls) for case in CASES]
    print(f"{'case':18s} {'input':>18s} {'pytorch ms':>11s} {'oneDNN ms':>10s} {'speedup':>8s} {'max |diff|':>11s}")
    for r in rows:
        shape = "x".join(map(str, r["input"]))
        print(f"{r['case']:18s} {shape:>18s} {r['pytorch_ms']:11.1f} {r['onednn_ms']:10.1f} {r['speedup']:7.2f}x "
              f"{r['max_abs_difference']:11.1e}")
    print(f"denoiser forward at batch 1 (inference), medians of {args.repeats} alternating rounds of "
          f"{args.calls} calls, {torch.get_num_threads()} threads")
    if args.json:
        write_results(args.json, "conv_backend", {"rows": rows}, threads=torch.get_num_threads(), torch=torch.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
