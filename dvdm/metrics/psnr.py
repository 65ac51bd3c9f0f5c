"""PSNR in numpy (no torch import), so every side of the project, serving included, can share it.

Convention: PSNR = 10 log10(peak^2 / MSE) dB, with the MSE in float64 over every element given and peak
255 (8-bit pixels, and residuals in pixel units), capped at `PSNR_CAP_DB`: identical inputs give exactly
100 dB, never infinity, so means stay finite and JSON stays valid (it has no infinity).
"""

from __future__ import annotations

import math

import numpy as np

PEAK = 255.0
PSNR_CAP_DB = 100.0


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared difference over all elements, in float64."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr_of_mse(value: float, peak: float = PEAK) -> float:
    """PSNR (dB) of a mean squared error, capped at `PSNR_CAP_DB` (an MSE of 0 gives the cap)."""
    if value < 0 or math.isnan(value):
        raise ValueError(f"a mean squared error must be >= 0, got {value}")
    if value == 0:
        return PSNR_CAP_DB
    return min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / value))


def psnr(a: np.ndarray, b: np.ndarray, peak: float = PEAK) -> float:
    """PSNR (dB) of all of `a` against all of `b`: one pooled MSE, not a mean of per-frame PSNRs."""
    return psnr_of_mse(mse(a, b), peak)


def psnr_per_frame(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """PSNR of each frame pair of two uint8 (T, H, W, 3) clips; (T,) float64, each capped."""
    pred, target = np.asarray(pred), np.asarray(target)
    check_frames(pred, target)
    errors = ((pred.astype(np.float64) - target.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return np.array([psnr_of_mse(float(e)) for e in errors], np.float64)


def check_frames(pred: np.ndarray, target: np.ndarray) -> None:
    """Both uint8 RGB clips (T, H, W, 3) of the same shape, or ValueError naming what is wrong."""
    for name, x in (("generated", pred), ("reference", target)):
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 RGB frames (T, H, W, 3) for the {name} clip, got {x.dtype} "
                             f"{x.shape}")
    if pred.shape != target.shape:
        raise ValueError(f"generated {pred.shape} and reference {target.shape} frames differ in shape "
                         "(T, H, W, C); resize or trim before comparing")
