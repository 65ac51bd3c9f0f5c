"""`rgb`: the VDM baseline. The model generates frames 1..T-1 themselves, scaled to [-1, 1]."""

from __future__ import annotations

import numpy as np

from dvdm.spaces.base import PixelSpace


class RGBSpace(PixelSpace):
    name = "rgb"

    def encode(self, video: np.ndarray) -> np.ndarray:
        return (video[1:].astype(np.float32) / 127.5 - 1.0).transpose(3, 0, 1, 2)

    def decode(self, target: np.ndarray, first_frame: np.ndarray) -> np.ndarray:
        frames = np.clip(np.rint((np.asarray(target, np.float32).transpose(1, 2, 3, 0) + 1.0) * 127.5), 0, 255)
        return np.concatenate([first_frame[None], frames.astype(np.uint8)])
