"""The inference service: ONNX Runtime + numpy only, never torch (DESIGN.md section 2).

It runs from an export folder (`dvdm export`: ONNX graphs + `manifest.json`) and shares the numpy-only
decode side of `dvdm.codec` and `dvdm.video`. Entry point: `serving.pipeline.OrtVideoPipeline`.
Submodules are imported on first use, so `import serving` is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OrtVideoPipeline", "choose_provider"]


def __getattr__(name: str) -> Any:
    if name == "OrtVideoPipeline":
        from serving.pipeline import OrtVideoPipeline

        return OrtVideoPipeline
    if name == "choose_provider":
        from serving.runtime import choose_provider

        return choose_provider
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
