"""`diff`: D-VDM. The model generates frame differences to the first frame (or to the previous frame),
in units of 1/255, and decoding adds them back to the given content frame."""

from __future__ import annotations

import numpy as np

from dvdm.codec.differences import REFERENCES, frame_differences, integrate_differences
from dvdm.spaces.base import PixelSpace


class DiffSpace(PixelSpace):
    name = "diff"

    def __init__(self, reference: str = "first"):
        super().__init__()
        if reference not in REFERENCES:
            raise ValueError(f"diff space: reference must be one of {REFERENCES}, got {reference!r}")
        self.reference = reference

    def encode(self, video: np.ndarray) -> np.ndarray:
        return (frame_differences(video, self.reference).astype(np.float32) / 255.0).transpose(3, 0, 1, 2)

    def decode(self, target: np.ndarray, first_frame: np.ndarray) -> np.ndarray:
        d = np.rint(np.asarray(target, np.float32).transpose(1, 2, 3, 0) * 255.0)
        return integrate_differences(first_frame, d.astype(np.int32), self.reference)

    def config(self) -> dict:
        return {"reference": self.reference}
