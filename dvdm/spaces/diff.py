"""`diff`: D-VDM. The model generates frame differences to the first frame (or to the previous frame),
in units of 1/255, and decoding adds them back to the given content frame."""

from __future__ import annotations

from typing import Any

import numpy as np

from dvdm.codec.differences import REFERENCES, frame_differences
from dvdm.errors import ConfigError
from dvdm.spaces.base import PixelSpace
from dvdm.spaces.registry import register_space


@register_space
class DiffSpace(PixelSpace):
    name = "diff"
    description = "D-VDM: the denoiser generates differences to the first frame"
    settings = ("reference",)

    def __init__(self, reference: str = "first"):
        super().__init__()
        if reference not in REFERENCES:
            raise ConfigError(f"diff space: reference must be one of {REFERENCES}, got {reference!r}")
        self.reference = reference

    def encode(self, video: np.ndarray) -> np.ndarray:
        return (frame_differences(video, self.reference).astype(np.float32) / 255.0).transpose(3, 0, 1, 2)

    def decode_spec(self) -> dict[str, Any]:
        # rint(target * 255) are differences to the first / previous frame
        return {"method": "pixels", "offset": 0.0, "scale": 255.0, "reference": self.reference}

    def config(self) -> dict:
        return {"reference": self.reference}
