"""Stage `evaluate`: sample held-out clips from their first frame + caption, and measure them.

Outputs (one directory, written atomically): `results.json` (every number, its protocol and the settings:
what MLflow logs and the promotion gate reads), `report.md`, `grid.gif` + `grid.mp4` (ground truth left,
generated right, one clip per row), per-frame PSNR/SSIM plots, and the generated clips as MP4. Metrics: FVD +
KVD (I3D, when the weights are installed and the clips have the 16 frames of the protocol; otherwise skipped
with the reason recorded), PSNR/SSIM against the held-out ground truth, first-frame fidelity, warping error,
motion-following on synthetic data, cFVD/sFVD where the clips carry classes/subjects, and sampling time per
clip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvdm.config import EvaluateParams, as_dict
from dvdm.data.shards import ShardedDataset
from dvdm.errors import DataError, DvdmError
from dvdm.stages.metrics_file import RESULTS_FILE, write_metrics
from dvdm.utils.atomic import atomic_dir, write_json
from dvdm.utils.progress import Progress, announce

FVD_FRAMES = 16


def held_out(data: ShardedDataset, split: str, limit: int) -> tuple[str, list[dict], list[np.ndarray]]:
    """(split used, records, clips) of the held-out split (`val` when the asked split is empty)."""
    counts = data.splits()
    if not counts.get(split):
        fallback = next((s for s in ("test", "val") if counts.get(s)), None)
        if fallback is None:
            raise DataError(f"{data.root}: no held-out clips (splits: {counts}); ingest with a test or val split")
        split = fallback
    records, clips = [], []
    for record, arrays in data.iter_examples(split):
        records.append(record)
        clips.append(arrays["frames"])
        if limit and len(clips) >= limit:
            break
    return split, records, clips


def side_by_side(real: list[np.ndarray], fake: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """One video: a row per clip, ground truth left and generated right, separated by white lines."""
    rows = []
    for r, f in zip(real, fake):
        t, h, _, c = r.shape
        sep = np.full((t, h, gap, c), 255, np.uint8)
        rows.append(np.concatenate([r, sep, f], axis=2))
        rows.append(np.full((t, gap, rows[-1].shape[2], c), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=1)


def _plot_curves(path: Path, curves: dict[str, list[float]], ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=name)
    ax.set_xlabel("generated frame")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fvd_block(real: list[np.ndarray], fake: list[np.ndarray], records: list[dict], fake_records: list[dict],
               params: EvaluateParams) -> dict[str, Any]:
    """FVD/KVD and the grouped variants, or the reason they were skipped."""
    if not params.fvd:
        return {"fvd_skipped": "disabled (evaluate.fvd: false)"}
    if len(real) < 2:
        return {"fvd_skipped": f"{len(real)} held-out clip; FVD needs at least 2 (a covariance)"}
    frames = params.fvd_frames or FVD_FRAMES
    if real[0].shape[0] < frames:
        return {"fvd_skipped": f"clips have {real[0].shape[0]} frames; the FVD protocol needs {FVD_FRAMES} "
                               f"(evaluate.fvd_frames sets another clip length, >= 9, for comparisons of your own)"}
    from dvdm.evaluate.errors import I3DWeightsMissing
    from dvdm.metrics.fvd import extract_features, fvd_from_features
    from dvdm.evaluate.group_fvd import cfvd, sfvd
    from dvdm.evaluate.i3d import load_i3d

    try:
        model = load_i3d(None, params.device if params.device != "auto" else _auto_device())
    except I3DWeightsMissing as exc:
        return {"fvd_skipped": str(exc)}
    rf = extract_features(real, model=model, frames=frames, label="evaluate: FVD features, held-out clips")
    ff = extract_features(fake, model=model, frames=frames, label="evaluate: FVD features, generated clips")
    res = fvd_from_features(rf, ff, seed=params.seed)
    out: dict[str, Any] = {"fvd": res.fvd, "kvd": res.kvd, "fvd_protocol": res.protocol, "fvd_notes": res.notes}
    for key, fn, name in (("class_index", cfvd, "cfvd"), ("subject", sfvd, "sfvd")):
        groups = [(r.get("labels") or {}).get(key) for r in records]
        fake_groups = [(r.get("labels") or {}).get(key) for r in fake_records]
        if all(g is not None for g in groups):
            g = fn(rf, groups, ff, fake_groups)
            out[name] = g.to_dict()
    return out


def _auto_device() -> str:
    from dvdm.train.device import select_device

    return str(select_device("auto"))


def _report(metrics: dict[str, Any], params: EvaluateParams) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["# dvdm evaluation", "",
             f"Model: `{metrics['model']}`  ", f"Data: `{metrics['data']}` (split `{metrics['split']}`, "
             f"{metrics['n_clips']} clips)  ",
             f"Sampling: {params.sampler} {params.steps} steps, guidance {params.guidance}, seeds "
             f"{params.seed}..{params.seed + metrics['n_clips'] - 1}", "", "| metric | value |", "|---|---|"]
    for key in ("fvd", "kvd", "psnr", "ssim", "first_frame_psnr", "warping_error", "direction_accuracy",
                "speed_accuracy", "motion_accuracy", "swap_direction_accuracy", "swap_speed_accuracy",
                "swap_speed_error", "drawn_direction_accuracy", "drawn_speed_accuracy", "drawn_speed_error",
                "sample_seconds_per_clip"):
        if key in metrics and metrics[key] is not None:
            lines.append(f"| {key} | {fmt(metrics[key])} |")
    if "fvd_skipped" in metrics:
        lines += ["", f"FVD skipped: {metrics['fvd_skipped']}"]
    if metrics.get("fvd_protocol"):
        p = metrics["fvd_protocol"]
        lines += ["", f"FVD protocol: {p['network']}, {p['feature']}, N real {p['n_real']} / generated "
                  f"{p['n_fake']}, {p['frames']} frames, {p['size'][0]}x{p['size'][1]}, weights sha256 "
                  f"`{p['weights_sha256'][:16]}...`"]
        lines += [f"- note: {n}" for n in metrics.get("fvd_notes", [])]
    for name in ("cfvd", "sfvd"):
        if name in metrics:
            lines.append(f"- {name}: mean {fmt(metrics[name].get('mean'))}, std {fmt(metrics[name].get('std'))}")
    lines += ["", "![ground truth | generated](grid.gif)", "", "![PSNR per frame](psnr_per_frame.png)", ""]
    for name in ("held_out", "drawn"):
        prefix = "swap" if name == "held_out" else "drawn"
        if f"{prefix}_direction_accuracy" in metrics:
            lines += [f"## Prompt swap: {name.replace('_', '-')} first frames", "",
                      f"Every first frame generated with all 24 prompts (8 directions x 3 speeds). Scored: the "
                      f"{metrics[f'{prefix}_n']} prompts whose motion keeps the object inside the frame (as every "
                      f"training caption does): direction {metrics[f'{prefix}_direction_accuracy']:.1%} (chance "
                      f"12.5 %), speed {metrics[f'{prefix}_speed_accuracy']:.1%} (chance 33.3 %), mean speed "
                      f"error {metrics[f'{prefix}_speed_error']:.2f} px/frame. With the "
                      f"{metrics[f'{prefix}_out_of_frame']} prompts that would take it out of the frame: direction "
                      f"{metrics[f'{prefix}_all_direction_accuracy']:.1%}, speed "
                      f"{metrics[f'{prefix}_all_speed_accuracy']:.1%}.", "",
                      f"![prompt swap](prompt_swap/{name}_grid.gif)", "",
                      f"![confusion](prompt_swap/{name}_confusion.png)", ""]
    return "\n".join(lines)


SWAP_SETS = ("held_out", "drawn")


def prompt_swap_section(pipe, params: EvaluateParams, records: list[dict], clips: list[np.ndarray],
                        folder: Path) -> dict[str, Any]:
    """The prompt-swap test (`dvdm.evaluate.prompt_swap`) on held-out and PIL-drawn first frames: metrics
    `swap_*` (held-out) and `drawn_*` (drawn), and into `folder`: a grid GIF per set (a row per prompt),
    confusion-matrix PNGs and `prompt_swap.json` with every sample's asked and measured motion."""
    from dvdm.evaluate.prompt_swap import first_frame_sets, plot_confusion, run_prompt_swap, swap_grid
    from dvdm.video.writer import write_gif

    guidance = params.prompt_swap_guidance or params.guidance
    sets = first_frame_sets(records, clips, params.prompt_swap_clips, params.prompt_swap_drawn, pipe.height,
                            pipe.width, pipe.frames, seed=params.seed)

    def generate(images, prompts, seeds):
        return pipe(images, prompts, steps=params.steps, guidance=guidance, seeds=seeds, sampler=params.sampler)

    metrics: dict[str, Any] = {}
    details: dict[str, Any] = {"guidance": guidance, "steps": params.steps}
    folder.mkdir(parents=True, exist_ok=True)
    for name, prefix in (("held_out", "swap"), ("drawn", "drawn")):
        frames = sets[name]
        if not frames:
            continue
        started = time.perf_counter()
        res = run_prompt_swap(generate, frames, seed=params.seed, batch_size=params.batch_size,
                              label=f"evaluate: prompt swap, {name.replace('_', '-')} first frames")
        metrics.update({f"{prefix}_direction_accuracy": res["direction_accuracy"],
                        f"{prefix}_speed_accuracy": res["speed_accuracy"],
                        f"{prefix}_speed_error": res["speed_error"],
                        f"{prefix}_static_fraction": res["static_fraction"], f"{prefix}_n": res["n"],
                        f"{prefix}_out_of_frame": res["n_out_of_frame"],
                        f"{prefix}_all_direction_accuracy": res["all_prompts"]["direction_accuracy"],
                        f"{prefix}_all_speed_accuracy": res["all_prompts"]["speed_accuracy"]})
        write_gif(folder / f"{name}_grid.gif", swap_grid(res, frames, columns=3), fps=params.fps)
        plot_confusion(folder / f"{name}_confusion.png", res["confusion"],
                       f"{name.replace('_', '-')}: direction accuracy {res['direction_accuracy']:.0%}")
        details[name] = {k: v for k, v in res.items() if k not in ("videos", "prompts")}
        details[name]["first_frames"] = [f.origin for f in frames]
        details[name]["seconds"] = round(time.perf_counter() - started, 2)
    write_json(folder / "prompt_swap.json", details)
    return metrics


@dataclass
class Samples:
    """The generated clips, each with the held-out clip it was conditioned on and the seed it used."""

    videos: list[np.ndarray]
    references: list[np.ndarray]
    records: list[dict]
    seeds: list[int]
    seconds: float


def load_pipeline(model_dir: Path, device: str):
    """The trained model: a train output folder (its `checkpoint/`) or a checkpoint folder itself."""
    from dvdm.pipeline import VideoPipeline

    return VideoPipeline.from_checkpoint(model_dir, device=device)  # it accepts both


def sample_held_out(pipe, params: EvaluateParams, records: list[dict], real: list[np.ndarray]) -> Samples:
    """k samples per held-out clip (the BAIR protocol draws 100) from its first frame and caption: sample j
    of clip i uses seed seed + j * n + i, so k = 1 reproduces the same videos as before."""
    n, k = len(real), params.samples_per_clip
    jobs = [(j * n + i, i) for j in range(k) for i in range(n)]
    videos: list[np.ndarray] = []
    started = time.perf_counter()
    with Progress("evaluate: held-out samples", len(jobs), "clip") as progress:
        for b in range(0, len(jobs), params.batch_size):
            chunk = jobs[b:b + params.batch_size]
            prompts = [records[i].get("caption") or "" for _, i in chunk]
            out = pipe(np.stack([real[i][0] for _, i in chunk]), prompts, steps=params.steps,
                       guidance=params.guidance, seeds=[params.seed + s for s, _ in chunk], sampler=params.sampler)
            videos.extend(list(out))
            progress.update(len(videos))
    return Samples(videos=videos, references=[real[i] for _, i in jobs], records=[records[i] for _, i in jobs],
                   seeds=[params.seed + s for s, _ in jobs], seconds=time.perf_counter() - started)


def motion_following_block(samples: Samples) -> dict[str, Any]:
    """Direction/speed accuracy of the prompted motion, when every clip carries the synthetic labels."""
    from dvdm.evaluate.motion_following import score_motion_following

    labels = [r.get("labels") or {} for r in samples.records]
    if not all("direction_index" in lab and "objects" in lab for lab in labels):
        return {}
    mf = score_motion_following(samples.videos, labels)
    out = {k: mf[k] for k in ("direction_accuracy", "speed_accuracy", "motion_accuracy", "velocity_error",
                              "object_not_found")}
    out["motion_chance"] = mf["chance"]
    return out


def write_videos(folder: Path, params: EvaluateParams, real: list[np.ndarray], samples: Samples) -> None:
    """The side-by-side grid (GIF + MP4) and every generated clip as `samples/<clip id>-seed<seed>.mp4`."""
    from dvdm.video.writer import write_gif, write_mp4

    grid_n = min(params.grid_clips, len(samples.videos))
    grid = side_by_side(real[:grid_n], samples.videos[:grid_n])
    write_gif(folder / "grid.gif", grid, fps=params.fps)
    write_mp4(folder / "grid.mp4", grid, fps=params.fps)
    (folder / "samples").mkdir()
    for seed, rec, video in zip(samples.seeds, samples.records, samples.videos):
        write_mp4(folder / "samples" / f"{rec['id'].replace('/', '_')}-seed{seed}.mp4", video, fps=params.fps)


def write_per_frame(folder: Path, space: str, frame: dict[str, Any]) -> None:
    """The mean per-frame PSNR/SSIM curves: two plots and `per_frame.json`."""
    _plot_curves(folder / "psnr_per_frame.png", {space: frame["psnr_per_frame"]}, "PSNR (dB)")
    _plot_curves(folder / "ssim_per_frame.png", {space: frame["ssim_per_frame"]}, "SSIM")
    write_json(folder / "per_frame.json", [{"frame": i + 1, "psnr": p, "ssim": q} for i, (p, q) in
                                           enumerate(zip(frame["psnr_per_frame"], frame["ssim_per_frame"]))])


def run_evaluate(params: EvaluateParams, model_dir: str | Path, data_dir: str | Path,
                 out_dir: str | Path, metrics_file: str | Path | None = None) -> dict[str, Any]:
    """Sample the held-out clips with a trained model, write every metric, picture and report, and return
    the metrics (what results.json holds).

    `metrics_file` (optional) gets the headline numbers (`dvdm.stages.metrics_file`), for DVC.
    """
    from dvdm.evaluate.frame_metrics import set_metrics

    if params.steps < 1 or params.max_clips < 0 or params.batch_size < 1 or params.samples_per_clip < 1:
        raise DvdmError("evaluate: steps, batch_size and samples_per_clip must be >= 1 and max_clips >= 0")
    model_dir = Path(model_dir)
    pipe = load_pipeline(model_dir, params.device)
    data = ShardedDataset(Path(data_dir))
    split, records, real = held_out(data, params.split, params.max_clips)
    want = (pipe.frames, pipe.height, pipe.width)
    if real[0].shape[:3] != want:
        raise DataError(f"{data_dir}: clips are {'x'.join(map(str, real[0].shape[:3]))} (frames x H x W) but "
                        f"the model generates {'x'.join(map(str, want))}")

    samples = sample_held_out(pipe, params, records, real)
    announce(f"evaluate: frame metrics of {len(samples.videos)} clips")
    frame = set_metrics(samples.videos, samples.references)
    metrics: dict[str, Any] = {
        "model": str(model_dir), "data": str(data_dir), "split": split, "n_clips": len(samples.videos),
        "n_real_clips": len(real), "samples_per_clip": params.samples_per_clip,
        "space": pipe.space.name, "sample_seconds_per_clip": samples.seconds / len(samples.videos),
        **{k: v for k, v in frame.items() if not k.endswith("_per_frame") and k != "n"},
    }
    metrics.update(motion_following_block(samples))
    metrics.update(_fvd_block(real, samples.videos, records, samples.records, params))
    metrics["params"] = as_dict(params)

    with atomic_dir(Path(out_dir)) as tmp:
        if params.prompt_swap_clips or params.prompt_swap_drawn:
            if params.prompt_swap_clips > len(real):
                _, swap_records, swap_clips = held_out(data, params.split, params.prompt_swap_clips)
            else:
                swap_records, swap_clips = records, real
            metrics.update(prompt_swap_section(pipe, params, swap_records, swap_clips, tmp / "prompt_swap"))
        announce(f"evaluate: writing the report, grids and {len(samples.videos)} videos")
        write_videos(tmp, params, real, samples)
        write_per_frame(tmp, pipe.space.name, frame)
        write_json(tmp / RESULTS_FILE, metrics)
        (tmp / "report.md").write_text(_report(metrics, params))
    if metrics_file is not None:
        write_metrics(metrics_file, {"clips": metrics["n_clips"], "psnr": metrics["psnr"], "ssim": metrics["ssim"],
                                     "fvd": metrics.get("fvd"), "direction": metrics.get("swap_direction_accuracy"),
                                     "speed": metrics.get("swap_speed_accuracy")})
    return metrics
