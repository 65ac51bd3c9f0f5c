"""Decoding a generated (denormalised) target to uint8 frames, in numpy, driven by a `decode` block alone.

Every target space describes its decode as such a block (`TargetSpace.decode_spec`, written into the export
manifest) and decodes through `decode_target`, so the library and the service run the same code; nothing
here knows the names of the spaces. Two methods cover them:

- `pixels`: the target is (3, T-1, H, W) on the frame grid. `v = rint((target + offset) * scale)`, then
  `reference` says what v is relative to: "none" (v are the frames), "first" (differences to the first
  frame) or "previous" (differences to the previous frame, summed along time). Clipped to uint8.
- `motion_residual`: (motion_channels + latent_channels, T-1, gh, gw) on the block grid: integer block
  motion vectors (`dvdm.codec.quantize`: dead zone, rounded, clipped to +-search) and residual latents,
  decoded to pixel residuals by the residual decoder (the autoencoder, or its ONNX graph in the service),
  then motion compensation from the previous decoded frame plus the residual (`dvdm.codec.residuals`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dvdm.codec.differences import integrate_differences
from dvdm.codec.quantize import DEFAULT_DEAD_ZONE, check_dead_zone, quantize_motion
from dvdm.codec.residuals import reconstruct
from dvdm.runtime.errors import ManifestError

ResidualDecoder = Callable[[np.ndarray], np.ndarray]
"""(N, k, gh, gw) latents -> (N, 3, H, W) float residuals in pixel units."""

METHODS = ("pixels", "motion_residual")
RESIDUAL_GRAPH = "residual_decoder"  # the graph (export) that decodes residual latents
REFERENCES = ("none", "first", "previous")


def check_spec(spec: dict[str, Any]) -> None:
    """ManifestError unless `spec` is a decode block this module can run."""
    method = spec.get("method") if isinstance(spec, dict) else None
    if method not in METHODS:
        raise ManifestError(f"manifest decode.method must be one of {METHODS}, got {method!r}")
    if method == "pixels":
        if spec.get("reference") not in REFERENCES:
            raise ManifestError(f"manifest decode.reference must be one of {REFERENCES}, got "
                                f"{spec.get('reference')!r}")
        for key in ("offset", "scale"):
            if not isinstance(spec.get(key), (int, float)):
                raise ManifestError(f"manifest decode.{key} must be a number")
    else:
        for key in ("block", "search", "motion_channels"):
            if not isinstance(spec.get(key), int) or spec[key] < 1:
                raise ManifestError(f"manifest decode.{key} must be a positive integer")
        try:
            check_dead_zone(spec.get("dead_zone", DEFAULT_DEAD_ZONE), spec["search"])
        except ValueError as exc:
            raise ManifestError(f"manifest decode.{exc}") from None
        if not isinstance(spec.get("residual"), dict) or "graph" not in spec["residual"]:
            raise ManifestError("manifest decode.residual must name the residual decoder graph")


def needs_residual_decoder(spec: dict[str, Any]) -> bool:
    """Whether a decode block needs the residual decoder (graph or codec) besides the target."""
    return spec.get("method") == "motion_residual"


def decode_target(spec: dict[str, Any], target: np.ndarray, first_frame: np.ndarray,
                  residual_decoder: ResidualDecoder | None = None) -> np.ndarray:
    """Raw target (C, T-1, h, w) + first frame uint8 (H, W, 3) -> uint8 clip (T, H, W, 3)."""
    target = np.asarray(target, np.float32)
    if spec["method"] == "pixels":
        v = np.rint((target.transpose(1, 2, 3, 0) + np.float32(spec["offset"])) * np.float32(spec["scale"]))
        if spec["reference"] == "none":
            frames = np.clip(v, 0, 255).astype(np.uint8)
            return np.concatenate([first_frame[None], frames])
        return integrate_differences(first_frame, v.astype(np.int32), spec["reference"])
    if residual_decoder is None:
        raise ManifestError("decode method motion_residual needs the residual decoder graph")
    k, search = spec["motion_channels"], spec["search"]
    # manifests written before the dead zone existed decoded with plain rounding (0.5)
    dead_zone = float(spec.get("dead_zone", DEFAULT_DEAD_ZONE))
    mv = quantize_motion(target[:k], search, dead_zone).transpose(1, 2, 3, 0)
    residual = np.asarray(residual_decoder(np.ascontiguousarray(target[k:].transpose(1, 0, 2, 3))), np.float32)
    h, w = first_frame.shape[:2]
    if residual.shape != (target.shape[1], 3, h, w):
        raise RuntimeError(f"residual decoder returned {residual.shape}, expected {(target.shape[1], 3, h, w)}")
    return reconstruct(first_frame, mv, residual.transpose(0, 2, 3, 1), spec["block"])
