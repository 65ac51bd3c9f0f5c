"""Device and mixed-precision selection: CUDA when present (with AMP), else CPU in float32."""

from __future__ import annotations

import contextlib

import torch

from dvdm.errors import ConfigError


def select_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {requested!r} requested but CUDA is not available on this machine")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"unknown device {requested!r} (use auto, cpu or cuda[:N])") from None


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (with a grad scaler); None (fp32) on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


PRECISIONS = ("fp32", "bf16", "fp16")


def inference_dtype(device: torch.device, precision: str = "fp32") -> torch.dtype | None:
    """The autocast dtype for sampling: None (float32, the default: bit-stable seeds on one machine), bfloat16
    (CPU or GPU; fast on CPUs with AVX512-BF16/AMX) or float16 (GPU only)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; on CPU use bf16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16
