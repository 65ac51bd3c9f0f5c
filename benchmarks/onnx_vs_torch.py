"""Benchmark: ONNX Runtime vs torch eager on the same denoiser graph and inputs (target: ORT >= 1.0x).

For an exported model (`dvdm export`, default models/export) and its checkpoint (models/diffusion), one
process measures, interleaved, medians of `--repeats`:
- one denoiser step (the network call the sampler makes) at batch 1, torch eager (inference mode) vs ORT at
  several session settings (intra-op threads, graph optimisation level);
- one whole clip (`--steps` DDIM steps + decoding) with the torch pipeline vs the torch-free ORT pipeline.

    python benchmarks/onnx_vs_torch.py [--export models/export] [--model models/diffusion] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dvdm.pipeline import VideoPipeline  # noqa: E402
from bench_json import write_results  # noqa: E402
from dvdm.runtime.pipeline import OrtVideoPipeline  # noqa: E402


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", type=Path, default=ROOT / "models" / "export")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "diffusion")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.export / "manifest.json").is_file():
        print(f"error: {args.export} is not an export folder (run `dvdm pipeline` or `dvdm export` first)",
              file=sys.stderr)
        return 2
    ckpt = args.model / "checkpoint" if (args.model / "checkpoint").is_dir() else args.model
    torch_pipe = VideoPipeline.from_checkpoint(ckpt, device="cpu")
    ort_pipe = OrtVideoPipeline.from_export(args.export, provider="cpu")
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (1, torch_pipe.height, torch_pipe.width, 3), dtype=np.uint8)
    shape = (1, *ort_pipe.target_shape)
    x = rng.standard_normal(shape, dtype=np.float32)
    features = ort_pipe.encode_image(first)
    text = ort_pipe.encode_text(["a red square moves left"]) if ort_pipe.has_text else None
    feeds = {"x_t": x, "t": np.array([500], np.int64), "image_features": features}
    if text is not None:
        feeds["text"] = text
    model = torch_pipe.model
    tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

    def torch_step():
        with torch.inference_mode():
            model(tfeeds["x_t"], tfeeds["t"], image_features=tfeeds["image_features"], text=tfeeds.get("text"))

    rows = [{"what": "denoiser step", "engine": "torch eager", "threads": torch.get_num_threads(),
             "seconds": median_time(torch_step, args.repeats)}]
    graph = str(args.export / "denoiser.onnx")
    for threads in (1, os.cpu_count() or 1):
        for level_name, level in (("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                                  ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)):
            opts = ort.SessionOptions()
            opts.graph_optimization_level = level
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
            rows.append({"what": "denoiser step", "engine": f"onnxruntime ({level_name})", "threads": threads,
                         "seconds": median_time(lambda s=sess: s.run(None, feeds), args.repeats)})

    prompt = ["a red square moves left"]
    rows.append({"what": f"clip ({args.steps} steps)", "engine": "torch eager", "threads": torch.get_num_threads(),
                 "seconds": median_time(lambda: torch_pipe(first, prompt, steps=args.steps, seeds=[0]),
                                        max(3, args.repeats // 5), warmup=1)})
    rows.append({"what": f"clip ({args.steps} steps)", "engine": "onnxruntime (serving)", "threads": None,
                 "seconds": median_time(lambda: ort_pipe(first, prompt, steps=args.steps, seeds=[0]),
                                        max(3, args.repeats // 5), warmup=1)})
    for r in rows:
        ref = next(x for x in rows if x["what"] == r["what"] and x["engine"] == "torch eager")
        r["speedup_vs_torch"] = ref["seconds"] / r["seconds"]
    print(f"{'what':18s} {'engine':24s} {'threads':>7s} {'ms':>9s} {'vs torch':>8s}")
    print("-" * 70)
    for r in rows:
        print(f"{r['what']:18s} {r['engine']:24s} {str(r['threads'] or 'default'):>7s} "
              f"{1000 * r['seconds']:9.2f} {r['speedup_vs_torch']:7.2f}x")
    print(f"(space {ort_pipe.manifest['space']['name']}, target {'x'.join(map(str, ort_pipe.target_shape))}, "
          f"batch 1, CPU; medians of {args.repeats} steps / {max(3, args.repeats // 5)} clips)")
    if args.json:
        write_results(args.json, "onnx_vs_torch", {"rows": rows, "export": str(args.export)}, onnxruntime=ort.__version__, torch=torch.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
