"""Spatial transforms on uint8 clips (T, H, W, 3) or single frames (H, W, 3), done with Pillow.

Pillow rather than OpenCV keeps `dvdm.video` light; "area" reproduces cv2.INTER_AREA (which LFDM uses
to downscale) with Pillow's BOX filter: both average the source pixels each output pixel covers.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_MODES = {"area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}


def _as_clip(frames: np.ndarray) -> tuple[np.ndarray, bool]:
    """View a single frame as a one-frame clip; remember to drop the axis again on the way out."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got dtype {frames.dtype}")
    if frames.ndim == 3 and frames.shape[-1] == 3:
        return frames[None], True
    if frames.ndim == 4 and frames.shape[-1] == 3:
        return frames, False
    raise ValueError(f"frames must be (T, H, W, 3) or (H, W, 3), got shape {frames.shape}")


def resize(frames: np.ndarray, height: int, width: int, mode: str = "area") -> np.ndarray:
    """Resize every frame to height x width.

    mode "area": box-average when shrinking (both sides no larger than the source), and, like
    cv2.INTER_AREA, bilinear when either side grows (a box filter would just replicate pixels then).
    "bilinear" (Pillow's, which also antialiases when shrinking) and "nearest" are applied as named.
    """
    if mode not in _MODES:
        raise ValueError(f"resize mode must be one of {sorted(_MODES)}, got {mode!r}")
    if height < 1 or width < 1:
        raise ValueError(f"resize target must be at least 1x1, got height={height}, width={width}")
    clip, single = _as_clip(frames)
    h, w = clip.shape[1:3]
    if (h, w) == (height, width):
        out = clip.copy()
    else:
        resample = _MODES[mode]
        if mode == "area" and (height > h or width > w):
            resample = Image.Resampling.BILINEAR
        out = np.empty((len(clip), height, width, 3), np.uint8)
        for i, frame in enumerate(clip):
            out[i] = np.asarray(Image.fromarray(frame).resize((width, height), resample=resample))
    return out[0] if single else out


def crop(frames: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """The height x width box whose top-left corner is (top, left); it must lie inside the frame.

    Returns a view of `frames` (no copy); copy it before writing into it.
    """
    clip, single = _as_clip(frames)
    h, w = clip.shape[1:3]
    if height < 1 or width < 1 or top < 0 or left < 0 or top + height > h or left + width > w:
        raise ValueError(f"crop box top={top}, left={left}, height={height}, width={width} "
                         f"does not fit inside the {h}x{w} (HxW) frame")
    out = clip[:, top:top + height, left:left + width]
    return out[0] if single else out


def center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centred height x width box (an odd margin leaves the extra pixel at the bottom/right)."""
    clip, _ = _as_clip(frames)
    h, w = clip.shape[1:3]
    return crop(frames, (h - height) // 2, (w - width) // 2, height, width)


def resize_short_side_and_center_crop(frames: np.ndarray, size: int, mode: str = "area") -> np.ndarray:
    """Scale so the shorter side is `size` (aspect kept), then centre-crop to size x size.

    The usual way to make square training clips without distorting the content.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    clip, _ = _as_clip(frames)
    h, w = clip.shape[1:3]
    scale = size / min(h, w)
    # max(size, ...) guards the long side against rounding below `size` on extreme aspect ratios.
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    return center_crop(resize(frames, new_h, new_w, mode=mode), size, size)
