"""Continuous motion (as a diffusion model samples it) -> integer block motion vectors.

The codec's vectors are integers and ~90 % of them are exactly 0 (static background). A sampled value is the
true integer plus sampling error; plain rounding turns every error above 0.5 px into a whole-block 1 px jump
that the residual cannot undo, so an imperfect model paints the background with symmetric jitter. A dead
zone keeps small values at 0 while larger ones round as usual: |v| < dead_zone -> 0, otherwise
sign(v) * max(1, rint(|v|)). dead_zone = 0.5 is plain rounding. The default is chosen by measurement
(docs/DECISIONS.md, "Motion-vector dead zone").

numpy only (shared with serving).
"""

from __future__ import annotations

import numpy as np

DEFAULT_DEAD_ZONE = 0.5


def check_dead_zone(dead_zone: float, search: int) -> None:
    """ValueError unless `dead_zone` is a number within [0.5, search + 0.5]."""
    if isinstance(dead_zone, bool) or not isinstance(dead_zone, (int, float)) \
            or not 0.5 <= dead_zone <= search + 0.5:
        raise ValueError(f"dead_zone must be a number within [0.5, search + 0.5] = [0.5, {search + 0.5}], "
                         f"got {dead_zone!r}")


def quantize_motion(values: np.ndarray, search: int, dead_zone: float = DEFAULT_DEAD_ZONE) -> np.ndarray:
    """Float motion vectors (any shape) -> int16, dead-zoned, rounded and clipped to +-search."""
    check_dead_zone(dead_zone, search)
    v = np.asarray(values, np.float32)
    magnitude = np.maximum(np.rint(np.abs(v)), 1.0)
    q = np.where(np.abs(v) < dead_zone, 0.0, np.sign(v) * magnitude)
    return np.clip(q, -search, search).astype(np.int16)
