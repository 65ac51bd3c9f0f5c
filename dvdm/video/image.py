"""Reading one image (a first frame) as uint8 RGB, with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dvdm.errors import VideoError


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """uint8 (H, W, 3); grayscale, palette and RGBA images are converted to RGB."""
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{p}: no such image")
    if p.is_dir():
        raise VideoError(f"{p}: is a folder, expected an image file")
    if p.stat().st_size == 0:
        raise VideoError(f"{p}: file is empty (0 bytes)")
    try:
        with Image.open(p) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except UnidentifiedImageError:
        raise VideoError(f"{p}: not a readable image") from None
    except OSError as exc:
        raise VideoError(f"{p}: unreadable image ({exc})") from None
