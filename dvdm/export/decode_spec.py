"""The torch-free description of a space's decode, written into the manifest for `serving.decode`.

Serving must decode from the manifest alone (it cannot import `dvdm.spaces`, which needs torch). A space
may describe itself with a `decode_spec()` method; for the three current spaces the description is built
here from their public attributes. Either way `check_decode_spec` decodes random targets with the space's
own `decode` and with `serving.decode.decode_target` and requires identical frames, so a description that
drifts from the space's code fails the export instead of serving wrong videos.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from dvdm.export.errors import ExportError
from dvdm.spaces.base import TargetSpace
from dvdm.spaces.diff import DiffSpace
from dvdm.spaces.mvres import MVResSpace
from dvdm.spaces.rgb import RGBSpace

RESIDUAL_GRAPH = "residual_decoder"


def _rgb(space: RGBSpace) -> dict[str, Any]:
    # RGBSpace.decode: clip(rint((target + 1) * 127.5)), frames stand alone
    return {"method": "pixels", "offset": 1.0, "scale": 127.5, "reference": "none"}


def _diff(space: DiffSpace) -> dict[str, Any]:
    # DiffSpace.decode: rint(target * 255) are differences to the first / previous frame
    return {"method": "pixels", "offset": 0.0, "scale": 255.0, "reference": space.reference}


def _mvres(space: MVResSpace) -> dict[str, Any]:
    if not hasattr(space.codec, "model"):
        raise ExportError(f"mvres: the residual codec {type(space.codec).__name__} has no network to export; "
                          f"only the trained autoencoder codec can be served")
    return {"method": "motion_residual", "block": int(space.block), "search": int(space.search),
            "motion_channels": 2, "dead_zone": float(space.dead_zone),
            "residual": {"graph": RESIDUAL_GRAPH, "latent_channels": int(space.codec.latent_channels)}}


_BUILDERS: tuple[tuple[type, Callable[[Any], dict[str, Any]]], ...] = (
    (RGBSpace, _rgb), (DiffSpace, _diff), (MVResSpace, _mvres))


def decode_spec(space: TargetSpace) -> dict[str, Any]:
    """The manifest's `decode` block for `space`."""
    own = getattr(space, "decode_spec", None)
    if callable(own):
        return dict(own())
    for cls, build in _BUILDERS:
        if type(space) is cls:
            return build(space)
    raise ExportError(f"space {space.name!r} ({type(space).__name__}) has no torch-free decode description; "
                      f"give it a decode_spec() method (see dvdm/export/decode_spec.py)")


def needs_residual_decoder(spec: dict[str, Any]) -> bool:
    return spec.get("method") == "motion_residual"


def check_decode_spec(space: TargetSpace, spec: dict[str, Any], target_shape: tuple[int, ...],
                      first_frames: np.ndarray, residual_decoder: Callable[[np.ndarray], np.ndarray] | None,
                      seed: int = 0) -> dict[str, Any]:
    """Decode random targets both ways; the numpy decoder must give exactly the space's frames.

    `residual_decoder` (for codec spaces) is the torch codec's decode in the graph's layout, so this
    checks the description and the numpy code, not ONNX numerics (parity.py checks those).
    """
    from serving.decode import check_spec, decode_target

    check_spec(spec)
    rng = np.random.default_rng(seed)
    worst = 0
    for i, first in enumerate(first_frames):
        normalised = rng.standard_normal(target_shape).astype(np.float32) * 1.5
        raw = space.denormalize(normalised)
        ours = decode_target(spec, raw, first, residual_decoder)
        theirs = space.decode(raw, first)
        if ours.shape != theirs.shape or ours.dtype != theirs.dtype:
            raise ExportError(f"decode description of {space.name}: frames {ours.shape} {ours.dtype} but the "
                              f"space decodes to {theirs.shape} {theirs.dtype}")
        worst = max(worst, int(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).max()))
    return {"samples": len(first_frames), "max_abs_diff": worst, "passed": worst == 0}
