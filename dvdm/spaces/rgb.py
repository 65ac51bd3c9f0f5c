"""`rgb`: the VDM baseline. The model generates frames 1..T-1 themselves, scaled to [-1, 1]."""

from __future__ import annotations

from typing import Any

import numpy as np

from dvdm.spaces.base import PixelSpace
from dvdm.spaces.registry import register_space


@register_space
class RGBSpace(PixelSpace):
    name = "rgb"
    description = "VDM baseline: the denoiser generates the frames themselves"

    def encode(self, video: np.ndarray) -> np.ndarray:
        return (video[1:].astype(np.float32) / 127.5 - 1.0).transpose(3, 0, 1, 2)

    def decode_spec(self) -> dict[str, Any]:
        # the inverse of encode: clip(rint((target + 1) * 127.5)), frames stand alone
        return {"method": "pixels", "offset": 1.0, "scale": 127.5, "reference": "none"}
