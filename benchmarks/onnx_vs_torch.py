"""Benchmark: the torch-free ONNX Runtime serving path vs torch eager, per denoiser step and per clip
(target: ORT >= 1.2x torch per clip at batch 1, end-to-end parity >= 40 dB).

From one trained checkpoint (`--model`, default models/diffusion) the script exports the model twice with the
export defaults (`dvdm.config.ExportParams`: sampler, steps, guidance), into temporary folders:
- `3D convs`: the (1,3,3) / (3,1,1) / 1x1x1 convolutions written as ONNX 3D convs (what exports did before);
- `2D convs`: the current export, factorised kernels written as 2D convs (`dvdm/models/conv.py`).

Then, interleaved, medians of `--repeats`:
- one denoiser step at the batch a guided single-clip request runs (2: conditional + unconditional), torch
  eager (inference mode, oneDNN convs) vs ORT: each export with a dynamic batch axis, the 2D export with the
  batch fixed per session (`dvdm.runtime.batch_sessions`) on all threads and on one, the count `dvdm serve`
  picks by timing both at load (`dvdm.runtime.thread_choice`), and, for reference, spin-waiting threads
  (which serving does not use);
- the same step inside each pipeline's sampling loop: (time of 3x the steps - time of the steps) / 2x steps;
- one whole clip at the export's default sampler/steps/guidance, batch 1 (text and image encoding, sampling,
  decoding): the torch `VideoPipeline` vs the ORT pipeline as it was (3D, dynamic batch) and as it is;
- the graph's node count after onnxruntime's optimisation, dynamic vs fixed batch;
- the end-to-end PSNR of the current ORT clip against torch from the same noise (`dvdm.export.parity`).

    python benchmarks/onnx_vs_torch.py [--model models/diffusion] [--repeats 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_json import write_results  # noqa: E402
from dvdm.config import ExportParams  # noqa: E402
from dvdm.export import parity  # noqa: E402
from dvdm.export.export import export_model, resolve_checkpoint  # noqa: E402
from dvdm.models import conv  # noqa: E402
from dvdm.pipeline import VideoPipeline  # noqa: E402
from dvdm.runtime import cpus  # noqa: E402
from dvdm.runtime.pipeline import OrtVideoPipeline  # noqa: E402
from dvdm.runtime.sessions import session_options  # noqa: E402

PROMPT = "a red square moves left"


def median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def export(checkpoint: Path, out: Path, params: ExportParams, conv2d: bool) -> None:
    with mock.patch.object(conv, "_as_conv2d", conv._as_conv2d if conv2d else (lambda *_: None)):
        export_model(checkpoint, out, weights=params.weights, opset=params.opset, steps=params.steps,
                     guidance=params.guidance, eta=params.eta, sampler=params.sampler, parity=True,
                     parity_steps=params.parity_steps, min_psnr=params.min_psnr)


def session(path: Path, *, threads: int, spinning: bool, fixed_batch: int | None = None) -> ort.InferenceSession:
    """A CPU session as serving opens them (`session_options`), with the thread count, spin-waiting and fixed
    batch of the arm."""
    opts = session_options(threads, {"batch": fixed_batch} if fixed_batch else None, spinning=spinning)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def graph_nodes(path: Path, threads: int, fixed_batch: int | None, tmp: Path) -> int:
    """Nodes of the graph as onnxruntime runs it (after its optimisations, written out to count)."""
    import onnx

    opts = session_options(threads, {"batch": fixed_batch} if fixed_batch else None)
    opts.optimized_model_filepath = str(tmp / f"optimized-{path.parent.name}-{fixed_batch}.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return len(onnx.load(opts.optimized_model_filepath).graph.node)


def project_relative(path: Path) -> str:
    """The model's path relative to the project, or its last two parts when it lies elsewhere (a result file
    must not carry one machine's temp paths)."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else "/".join(path.parts[-2:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "diffusion")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--clip-repeats", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    try:
        checkpoint = resolve_checkpoint(args.model)
    except Exception as exc:  # the library's own message names the problem
        print(f"error: {exc}", file=sys.stderr)
        return 2
    params = ExportParams()
    threads = cpus.ort_threads() or 1
    tmp = Path(tempfile.mkdtemp(prefix="dvdm-onnx-vs-torch-"))
    export(checkpoint, tmp / "conv3d", params, conv2d=False)
    export(checkpoint, tmp / "conv2d", params, conv2d=True)
    print("exported both graphs", file=sys.stderr)

    torch_pipe = VideoPipeline.from_checkpoint(checkpoint, device="cpu")
    new = OrtVideoPipeline.from_export(tmp / "conv2d", provider="cpu", threads="auto")  # as `dvdm serve` loads it
    old = OrtVideoPipeline.from_export(tmp / "conv3d", provider="cpu")
    old.sessions["denoiser"] = old.sessions["denoiser"].dynamic  # serving as it was: one dynamic session
    guided = new.has_text and params.guidance != 1.0
    batch = 2 if guided else 1
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (1, torch_pipe.height, torch_pipe.width, 3), dtype=np.uint8)
    features = np.repeat(new.encode_image(first), batch, axis=0)
    feeds = {"x_t": rng.standard_normal((batch, *new.target_shape), dtype=np.float32),
             "t": np.full(batch, 500, np.int64), "image_features": features}
    if new.has_text:
        feeds["text"] = np.repeat(new.encode_text([PROMPT]), batch, axis=0)
    tfeeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
    model = torch_pipe.model

    def torch_step():
        with torch.inference_mode():
            model(tfeeds["x_t"], tfeeds["t"], image_features=tfeeds["image_features"], text=tfeeds.get("text"))

    step_arms = {
        ("torch eager", "-"): torch_step,
        ("onnxruntime", "3D convs, dynamic batch"): session(tmp / "conv3d" / "denoiser.onnx", threads=threads,
                                                           spinning=False),
        ("onnxruntime", "2D convs, dynamic batch"): session(tmp / "conv2d" / "denoiser.onnx", threads=threads,
                                                           spinning=False),
        ("onnxruntime", f"2D, fixed batch, {threads} threads"): session(
            tmp / "conv2d" / "denoiser.onnx", threads=threads, spinning=False, fixed_batch=batch),
        ("onnxruntime", "2D, fixed batch, 1 thread"): session(tmp / "conv2d" / "denoiser.onnx", threads=1,
                                                             spinning=False, fixed_batch=batch),
        ("onnxruntime", "2D, fixed batch, timed (serving)"): new.sessions["denoiser"].for_batch(batch),
    }
    # measured on its own, after the rest: its threads keep spinning after each call and would slow
    # whichever arm runs next (torch eager's step took 14 ms instead of 6 behind it)
    spin_key = ("onnxruntime", f"2D, fixed, {threads} spin-waiting")
    clip_arms = {
        ("torch eager", "VideoPipeline"): lambda: torch_pipe(first, [PROMPT], steps=params.steps,
                                                            guidance=params.guidance, sampler=params.sampler,
                                                            seeds=[0]),
        ("onnxruntime", "serving as it was (3D, dynamic)"): lambda: old(first, [PROMPT], seeds=[0]),
        ("onnxruntime", "serving now (2D, fixed, timed)"): lambda: new(first, [PROMPT], seeds=[0]),
    }
    # the step as the sampling loop runs it, between its other calls: (clip at 3x the steps - clip) / 2x steps
    long_steps = 3 * params.steps
    loop_arms = {
        ("torch eager", "in the sampling loop"): lambda: torch_pipe.sample_targets(
            first, [PROMPT], steps=long_steps, guidance=params.guidance, sampler=params.sampler, seeds=[0]),
        ("onnxruntime", "in the sampling loop (serving)"): lambda: new.sample_targets(
            first, [PROMPT], steps=long_steps, seeds=[0]),
    }
    short_arms = {
        ("torch eager", "in the sampling loop"): lambda: torch_pipe.sample_targets(
            first, [PROMPT], steps=params.steps, guidance=params.guidance, sampler=params.sampler, seeds=[0]),
        ("onnxruntime", "in the sampling loop (serving)"): lambda: new.sample_targets(first, [PROMPT], seeds=[0]),
    }
    for fn in [*clip_arms.values(), *loop_arms.values()]:  # build every lazily created session before timing
        fn()
    times: dict[tuple[str, str], list[float]] = {k: [] for k in [*step_arms, spin_key, *loop_arms, *clip_arms]}
    for _ in range(args.repeats):  # interleaved: a noisy moment hits every arm alike
        for key, arm in step_arms.items():
            fn = arm if callable(arm) else (lambda s=arm: s.run(None, feeds))
            times[key].append(median_time(fn, 1, warmup=1))
    for _ in range(args.clip_repeats):
        for key, fn in clip_arms.items():
            times[key].append(median_time(fn, 1, warmup=0))
        for key in loop_arms:
            extra = median_time(loop_arms[key], 1, warmup=0) - median_time(short_arms[key], 1, warmup=0)
            times[key].append(extra / (long_steps - params.steps))
    spinning = session(tmp / "conv2d" / "denoiser.onnx", threads=threads, spinning=True, fixed_batch=batch)
    times[spin_key] = [median_time(lambda: spinning.run(None, feeds), args.repeats)]
    step_arms[spin_key] = spinning
    e2e = parity.end_to_end(torch_pipe, new, first_frames=parity.parity_first_frames(2, torch_pipe.height,
                                                                                     torch_pipe.width),
                            prompts=[PROMPT, "a blue circle moves up"] if new.has_text else None,
                            steps=params.steps, guidance=params.guidance, seeds=[0, 1], min_psnr=params.min_psnr,
                            sampler=params.sampler)
    nodes = {"3D convs, dynamic batch": graph_nodes(tmp / "conv3d" / "denoiser.onnx", threads, None, tmp),
             "2D convs, dynamic batch": graph_nodes(tmp / "conv2d" / "denoiser.onnx", threads, None, tmp),
             "2D convs, fixed batch": graph_nodes(tmp / "conv2d" / "denoiser.onnx", threads, batch, tmp)}
    rows = []
    for (engine, variant), values in times.items():
        what = f"denoiser step (batch {batch})" if (engine, variant) in step_arms or (engine, variant) in loop_arms \
            else f"clip ({params.sampler} {params.steps}, guidance {params.guidance:g})"
        if engine == "torch eager":
            used = torch.get_num_threads()
        elif "serving" in variant and "as it was" not in variant:
            used = new.threads
        else:
            used = 1 if "1 thread" in variant else threads
        rows.append({"what": what, "engine": engine, "variant": variant, "seconds": statistics.median(values),
                     "threads": used})
    for r in rows:
        in_loop = "sampling loop" in r["variant"]  # compared with torch in its loop, not with the lone call
        ref = next(x for x in rows if x["what"] == r["what"] and x["engine"] == "torch eager"
                   and ("sampling loop" in x["variant"]) == in_loop)
        r["speedup_vs_torch"] = ref["seconds"] / r["seconds"]
    print(f"{'what':34s} {'engine':12s} {'variant':32s} {'thr':>3s} {'ms':>9s} {'vs torch':>8s}")
    print("-" * 104)
    for r in rows:
        print(f"{r['what']:34s} {r['engine']:12s} {r['variant']:32s} {r['threads']:3d} "
              f"{1000 * r['seconds']:9.2f} {r['speedup_vs_torch']:7.2f}x")
    print("nodes after onnxruntime's optimisation: " + ", ".join(f"{k} {v}" for k, v in nodes.items()))
    print(f"end-to-end parity of the serving pipeline vs torch ({e2e['steps']} {e2e['sampler']} steps, guidance "
          f"{e2e['guidance']:g}, 2 clips, same noise): {e2e['psnr_db']:.1f} dB (target >= {params.min_psnr:g})")
    print(f"(space {new.manifest['space']['name']}, target {'x'.join(map(str, new.target_shape))}, CPU; medians "
          f"of {args.repeats} steps / {args.clip_repeats} clips, interleaved)")
    if args.json:
        write_results(args.json, "onnx_vs_torch", {"rows": rows, "end_to_end_parity": e2e, "graph_nodes": nodes,
                                                   "export": dataclasses.asdict(params),
                                                   "model": project_relative(args.model)},
                      onnxruntime=ort.__version__, torch=torch.__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
