"""Per-channel normalisation of diffusion targets, for the library (numpy and torch) and the service.

Diffusion runs on `(raw - mean[c]) / std[c]`, with the statistics measured on the training set, saved with
the model and written into the export manifest, so every space reaches the denoiser at about unit variance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Array = Any  # a numpy array or a torch tensor


class Normalizer:
    """Per-channel affine normalisation of (C, T, h, w) or (B, C, T, h, w) targets."""

    def __init__(self, mean: list[float] | np.ndarray, std: list[float] | np.ndarray):
        self.mean = np.asarray(mean, np.float64)
        self.std = np.asarray(std, np.float64)
        if self.mean.shape != self.std.shape or self.mean.ndim != 1:
            raise ValueError("mean and std must be 1-D and of the same length")
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive, got {self.std.tolist()}")

    @classmethod
    def identity(cls, channels: int) -> Normalizer:
        return cls(np.zeros(channels), np.ones(channels))

    @classmethod
    def fit(cls, targets: list[np.ndarray] | np.ndarray, min_std: float = 1e-3) -> Normalizer:
        """Mean and std per channel over a set of raw targets (each (C, T, h, w)), in float64."""
        c = targets[0].shape[0]
        total = np.zeros(c)
        total_sq = np.zeros(c)
        count = 0
        for x in targets:
            x = np.asarray(x, np.float64).reshape(c, -1)
            total += x.sum(1)
            total_sq += (x * x).sum(1)
            count += x.shape[1]
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
        return cls(mean, np.maximum(std, min_std))

    def _stats(self, x: Array) -> tuple[Array, Array]:
        """mean and std shaped to broadcast over x: float64 arrays for numpy input (the arithmetic runs in
        float64, the result is float32), x's dtype and device for a torch tensor (no torch import here)."""
        lead = 1 if x.ndim == 5 else 0
        shape = (1,) * lead + (len(self.mean),) + (1,) * (x.ndim - 1 - lead)
        if isinstance(x, np.ndarray):
            return self.mean.reshape(shape), self.std.reshape(shape)
        return x.new_tensor(self.mean).reshape(shape), x.new_tensor(self.std).reshape(shape)

    def normalize(self, x: Array) -> Array:
        mean, std = self._stats(x)
        out = (x - mean) / std
        return out.astype(np.float32) if isinstance(x, np.ndarray) else out

    def denormalize(self, x: Array) -> Array:
        mean, std = self._stats(x)
        out = x * std + mean
        return out.astype(np.float32) if isinstance(x, np.ndarray) else out

    def state(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}
