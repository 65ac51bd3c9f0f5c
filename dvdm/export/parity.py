"""Parity of an export against the torch model it came from.

- per graph: max |ONNX - torch| on random inputs, at two batch sizes (the exported one and another, so the
  dynamic batch axis is exercised), against a tolerance relative to the output's scale;
- tokenizer: the `tokenizers` ids/masks serving computes equal transformers' for a set of prompts;
- end to end: the torch `VideoPipeline` and the ORT `dvdm.runtime.pipeline.OrtVideoPipeline` from the same
  first frames, prompts and starting noise (torch's per-seed noise, injected into the ORT pipeline), PSNR
  of the generated frames (target >= 40 dB).

The end-to-end check runs the runtime core's ORT pipeline on purpose: it is the code the service runs, so
it is the code that must match.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dvdm.metrics.psnr import PSNR_CAP_DB, psnr

PROMPTS = ("a red circle moves up", "a blue square moves to the left", "", "two digits bounce around the frame",
           "Ünïcödé prompt — with punctuation!", "a " + "very " * 80 + "long prompt that must be truncated")


def compare(ref: np.ndarray, out: np.ndarray, tolerance: float) -> dict[str, Any]:
    """max |out - ref| and whether it is within tolerance * max(1, max |ref|)."""
    if ref.shape != out.shape:
        return {"max_abs_diff": None, "passed": False, "error": f"shape {out.shape} != torch {ref.shape}"}
    peak = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
    allowed = tolerance * max(1.0, peak)
    return {"max_abs_diff": diff, "max_abs_ref": peak, "tolerance": allowed,
            "passed": bool(diff <= allowed and math.isfinite(diff))}


def graph_parity(session, module: torch.nn.Module, make_inputs: Callable[[int, int], dict[str, torch.Tensor]],
                 tolerance: float, batches: tuple[int, ...] = (2, 3)) -> dict[str, Any]:
    """Worst case over `batches` of |session(inputs) - module(inputs)|."""
    results = []
    for i, b in enumerate(batches):
        inputs = make_inputs(b, 1000 + i)
        with torch.no_grad():
            ref = module(*inputs.values()).float().numpy()
        out = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        results.append(compare(ref, out, tolerance))
    worst = max(results, key=lambda r: math.inf if r["max_abs_diff"] is None else r["max_abs_diff"])
    return {**worst, "batches": list(batches), "passed": all(r["passed"] for r in results)}


def tokenizer_parity(text_encoder, ort_text) -> dict[str, Any]:
    """transformers' tokenizer (torch side) vs `tokenizers` with the exported settings (serving side)."""
    prompts = list(PROMPTS)
    ref = text_encoder.tokenize(prompts)
    ours = ort_text.tokenize(prompts)
    same = (ref["input_ids"].numpy().shape == ours["input_ids"].shape
            and bool((ref["input_ids"].numpy() == ours["input_ids"]).all())
            and bool((ref["attention_mask"].numpy() == ours["attention_mask"]).all()))
    return {"prompts": len(prompts), "identical": same, "passed": same}


def parity_first_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images (B, H, W, 3): blocky noise upsampled, so they have structure and edges."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(coarse.repeat(4, axis=1).repeat(4, axis=2)[:, :height, :width])


def end_to_end(torch_pipe, ort_pipe, *, first_frames: np.ndarray, prompts: list[str] | None, steps: int,
               guidance: float, seeds: list[int], min_psnr: float, sampler: str = "ddim") -> dict[str, Any]:
    """Same first frames, prompts and starting noise through both pipelines (`sampler`, eta 0)."""
    from dvdm.diffusion.noise import randn

    b = len(first_frames)
    shape = (b, *torch_pipe.space.target_shape(torch_pipe.frames, torch_pipe.height, torch_pipe.width))
    # exactly the noise VideoPipeline.sample_targets draws: one fresh CPU generator per seed
    noise = randn(shape, [torch.Generator().manual_seed(int(s)) for s in seeds], "cpu").numpy()
    started = time.perf_counter()
    t_targets = torch_pipe.sample_targets(first_frames, prompts, steps=steps, guidance=guidance, seeds=seeds,
                                          sampler=sampler)
    t_videos = torch_pipe.decode(t_targets, first_frames)
    torch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    o_targets = ort_pipe.sample_targets(first_frames, prompts, steps=steps, guidance=guidance, eta=0.0,
                                        seeds=seeds, noise=noise, sampler=sampler)
    o_videos = ort_pipe.decode(o_targets, first_frames)
    ort_seconds = time.perf_counter() - started
    value = psnr(t_videos[:, 1:], o_videos[:, 1:])
    return {"samples": b, "steps": steps, "guidance": guidance, "seeds": list(seeds), "sampler": sampler, "eta": 0.0,
            "noise": "torch per-seed generators, injected into the ORT pipeline",
            "target_max_abs_diff": float(np.abs(t_targets.float().cpu().numpy() - o_targets).max()),
            "frames_max_abs_diff": int(np.abs(t_videos.astype(np.int16) - o_videos.astype(np.int16)).max()),
            "first_frame_equal": bool((t_videos[:, 0] == o_videos[:, 0]).all()),
            "psnr_db": value, "min_psnr_db": min_psnr,
            "psnr_note": f"generated frames 1..T-1; {PSNR_CAP_DB:g} = identical",
            "torch_seconds": round(torch_seconds, 3), "ort_seconds": round(ort_seconds, 3),
            "passed": bool(value >= min_psnr)}

