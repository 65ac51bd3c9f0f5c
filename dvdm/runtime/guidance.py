"""Classifier-free guidance (Ho & Salimans 2022): out = uncond + scale * (cond - uncond).

scale 1 is the plain conditional model and scale 0 the unconditional one. Guidance mixes model outputs
linearly, which is exact for eps, v and x0 predictions alike. `guide` is plain arithmetic, so it mixes numpy
arrays (the service) and torch tensors (`dvdm.diffusion.guidance`) alike.
"""

from __future__ import annotations

import math
import numbers
from typing import TypeVar

from dvdm.runtime.errors import InvalidRequest

Array = TypeVar("Array")


def check_guidance(scale: float) -> float:
    """The guidance scale as a float; InvalidRequest (a ValueError) unless it is finite and >= 0."""
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale) or scale < 0:
        raise InvalidRequest(f"guidance must be a finite number >= 0 (0 = unconditional), got {scale!r}")
    return float(scale)


def guide(cond: Array, uncond: Array, scale: float) -> Array:
    """uncond + scale * (cond - uncond)."""
    return uncond + float(scale) * (cond - uncond)  # type: ignore[operator]
