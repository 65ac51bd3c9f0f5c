"""The generated video as a response body: MP4 (H.264) or GIF bytes, written by `dvdm.video.writer`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

MEDIA_TYPES = {"mp4": "video/mp4", "gif": "image/gif"}


def encode_video(video: np.ndarray, fmt: str, fps: float) -> bytes:
    """uint8 (T, H, W, 3) -> MP4 (H.264) or GIF bytes, through a private temp folder (dvdm.video.writer)."""
    from dvdm.video.writer import write_gif, write_mp4

    with tempfile.TemporaryDirectory(prefix="dvdm-serve-") as tmp:
        path = Path(tmp) / f"video.{fmt}"  # a fixed name: nothing from the request
        if fmt == "mp4":
            write_mp4(path, video, fps=fps)
        else:
            write_gif(path, video, fps=fps)
        return path.read_bytes()
