"""The inference service: HTTP API, model registry resolution and hot swaps; ONNX Runtime + numpy only,
never torch (DESIGN.md section 2).

It runs export folders (`dvdm export`: ONNX graphs + `manifest.json`) with the library's torch-free runtime
core, `dvdm.runtime` (manifest, DDIM, decode, ONNX Runtime sessions, `OrtVideoPipeline`), which export's
parity check runs too. Submodules are imported on first use, so `import serving` is cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["OrtVideoPipeline", "choose_provider"]


def __getattr__(name: str) -> Any:
    if name == "OrtVideoPipeline":
        from dvdm.runtime.pipeline import OrtVideoPipeline

        return OrtVideoPipeline
    if name == "choose_provider":
        from dvdm.runtime.sessions import choose_provider

        return choose_provider
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
