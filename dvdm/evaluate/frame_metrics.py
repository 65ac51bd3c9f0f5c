"""Per-frame fidelity (PSNR, SSIM), first-frame fidelity, and temporal consistency of generated clips.

PSNR and SSIM are `dvdm.metrics`' (its docstring has the conventions: PSNR capped at 100 dB; SSIM as
published, i.e. scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)` / `tf.image.ssim`: Gaussian window 11 / sigma 1.5 on RGB in [0, 1], border
excluded). A clip's value is the mean over its frames, a set's the mean over clips (the convention of the
paper's Table 2: "averaged over 16 frames"). `ssim_convention="padded"` gives the torchmetrics-style SSIM
reported before issue 13; `set_metrics` records which one it used as `ssim_protocol`.

Temporal consistency is the warping error between consecutive generated frames: frame t is predicted from
frame t-1 by block motion compensation (the codec's own block matching), and the error left over is what
motion cannot explain (flicker, objects that appear or change). Lower is more consistent; a frozen clip
scores 0, so read it beside a motion metric, never alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dvdm.codec.compensate import motion_compensate
from dvdm.codec.search import SearchConfig, match_blocks
from dvdm.evaluate.errors import EvaluationError
from dvdm.metrics.psnr import psnr_per_frame
from dvdm.metrics.ssim import REPORTED_CONVENTION, ssim_per_frame, ssim_protocol


def clip_fidelity(pred: np.ndarray, target: np.ndarray, *,
                  ssim_convention: str = REPORTED_CONVENTION) -> dict[str, Any]:
    """PSNR/SSIM of a generated clip against its ground truth: clip means and the per-frame curves."""
    psnr, ssim = psnr_per_frame(pred, target), ssim_per_frame(pred, target, convention=ssim_convention)
    return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
            "psnr_per_frame": psnr.tolist(), "ssim_per_frame": ssim.tolist()}


def first_frame_fidelity(generated: np.ndarray, first_frame: np.ndarray, *,
                         ssim_convention: str = REPORTED_CONVENTION) -> dict[str, float]:
    """How faithfully the clip keeps its conditioning image: PSNR/SSIM of generated frame 0 vs the image."""
    image = np.asarray(first_frame)
    if image.ndim == 3:
        image = image[None]
    return {"psnr": float(psnr_per_frame(generated[:1], image)[0]),
            "ssim": float(ssim_per_frame(generated[:1], image, convention=ssim_convention)[0])}


def default_search(height: int, width: int) -> SearchConfig:
    """Block 8 / range 8 at 64x64, scaled with the frame size (the synthetic data's speeds scale the same way)."""
    scale = max(1, round(min(height, width) / 64))
    return SearchConfig(block=min(8 * scale, 128), search=min(8 * scale, 64))


def warping_error(frames: np.ndarray, config: SearchConfig | None = None) -> np.ndarray:
    """Mean |frame_t - motion_compensate(frame_{t-1})| per step, on 0..255 RGB; (T-1,) float64."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise ValueError(f"expected uint8 RGB frames (T >= 2, H, W, 3), got {frames.dtype} {frames.shape}")
    config = config or default_search(frames.shape[1], frames.shape[2])
    cur, ref = frames[1:], frames[:-1]
    pred = motion_compensate(ref, match_blocks(cur, ref, config), config.block)
    return np.abs(cur.astype(np.int16) - pred.astype(np.int16)).mean(axis=(1, 2, 3)).astype(np.float64)


def temporal_consistency(frames: np.ndarray, config: SearchConfig | None = None) -> dict[str, float]:
    """Warping error of a clip (mean over steps), beside the raw frame difference it started from."""
    frames = np.asarray(frames)
    err = warping_error(frames, config)
    raw = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean()
    return {"warping_error": float(err.mean()), "frame_difference": float(raw)}


def set_metrics(generated: Sequence[np.ndarray], targets: Sequence[np.ndarray] | None = None,
                first_frames: Sequence[np.ndarray] | None = None, *,
                ssim_convention: str = REPORTED_CONVENTION) -> dict[str, Any]:
    """Means over a set of clips: PSNR/SSIM (when `targets` given), first-frame fidelity (from `first_frames`,
    else the targets' frame 0), warping error; plus the mean per-frame PSNR/SSIM curves for plots.
    Whenever an SSIM is computed, `ssim_protocol` says which convention it follows."""
    if len(generated) == 0:
        raise EvaluationError("no generated clips to compute frame metrics on")
    out: dict[str, Any] = {"n": len(generated)}
    if targets is not None:
        if len(targets) != len(generated):
            raise ValueError(f"{len(generated)} generated clips but {len(targets)} references")
        per = [clip_fidelity(g, t, ssim_convention=ssim_convention) for g, t in zip(generated, targets)]
        out["psnr"] = float(np.mean([p["psnr"] for p in per]))
        out["ssim"] = float(np.mean([p["ssim"] for p in per]))
        out["psnr_per_frame"] = np.mean([p["psnr_per_frame"] for p in per], axis=0).tolist()
        out["ssim_per_frame"] = np.mean([p["ssim_per_frame"] for p in per], axis=0).tolist()
        if first_frames is None:
            first_frames = [t[0] for t in targets]
    if first_frames is not None:
        ff = [first_frame_fidelity(g, f, ssim_convention=ssim_convention) for g, f in zip(generated, first_frames)]
        out["first_frame_psnr"] = float(np.mean([f["psnr"] for f in ff]))
        out["first_frame_ssim"] = float(np.mean([f["ssim"] for f in ff]))
        out["ssim_protocol"] = ssim_protocol(ssim_convention)
    tc = [temporal_consistency(g) for g in generated]
    out["warping_error"] = float(np.mean([t["warping_error"] for t in tc]))
    out["frame_difference"] = float(np.mean([t["frame_difference"] for t in tc]))
    return out
