"""A first frame as a caller gives it -> uint8 (H, W, 3) at the model's size, for both pipelines.

The torch `dvdm.pipeline.VideoPipeline` and the ONNX `dvdm.runtime.pipeline.OrtVideoPipeline` take a
uint8 (H, W, 3) array, a PIL image or an image file path, of any size. It is scaled the way the export's
manifest says (`image.resize`): a square model scales the short side and centre-crops, any other model
stretches; `resize_policy` is that rule, so the torch pipeline resizes as the served export does.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from dvdm.runtime.errors import InvalidRequest

RESIZE_POLICIES = ("short_side_center_crop", "stretch")


def resize_policy(height: int, width: int) -> str:
    """How an image is fitted to a height x width model (what the export writes into `image.resize`)."""
    return "short_side_center_crop" if height == width else "stretch"


def is_one_image(image: Any) -> bool:
    """Whether `image` is a single image (a path, a PIL image or an (H, W, C) array), not a batch."""
    if isinstance(image, (str, os.PathLike)):
        return True
    from PIL import Image

    return isinstance(image, Image.Image) or (isinstance(image, np.ndarray) and image.ndim == 3)


def image_array(image: Any) -> np.ndarray:
    """uint8 (H, W, 3) from a path (read as RGB), a PIL image (converted to RGB) or a uint8 (H, W, 3) array."""
    if isinstance(image, (str, os.PathLike)):
        from dvdm.video.image import read_image  # VideoError naming the file when it is not a readable image

        return read_image(image)
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3 or min(array.shape[:2]) < 1:
        raise InvalidRequest(f"image must be uint8 (H, W, 3), a PIL image or an image file, got "
                             f"{array.dtype} {array.shape}")
    return array


def fit_first_frame(image: Any, height: int, width: int, policy: str | None = None,
                    mode: str = "area") -> np.ndarray:
    """Any image `image_array` takes -> uint8 (height, width, 3), as `policy` says (default `resize_policy`).
    InvalidRequest for an image more than `dvdm.video.transforms.MAX_ASPECT_RATIO` times as elongated as
    the model, before any resize work (the resized frame would be gigabytes)."""
    image = image_array(image)
    if image.shape[:2] == (height, width):
        return image
    from dvdm.video.transforms import check_aspect_ratio, resize, resize_short_side_and_center_crop

    try:
        check_aspect_ratio(*image.shape[:2], height, width)
    except ValueError as exc:
        raise InvalidRequest(f"image: {exc}") from None
    policy = policy or resize_policy(height, width)
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize policy must be one of {RESIZE_POLICIES}, got {policy!r}")
    if policy == "short_side_center_crop":
        if height != width:
            raise ValueError("resize policy short_side_center_crop needs a square model size")
        return resize_short_side_and_center_crop(image[None], height, mode=mode)[0]
    return resize(image[None], height, width, mode=mode)[0]
