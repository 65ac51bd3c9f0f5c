"""Spatial transforms on uint8 clips (T, H, W, 3) or single frames (H, W, 3), with numpy and Pillow.

No OpenCV, to keep `dvdm.video` light. LFDM downscales with cv2.INTER_AREA, so "area" reproduces it in
numpy (`_area_shrink`): Pillow's BOX is not a substitute, because it gives each source pixel whose
centre falls in the box full weight instead of weighting it by the area it covers, and it rounds after
each of its two passes (about +0.5 grey level on average).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_MODES = ("area", "bilinear", "nearest")
_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST}
# How many times more elongated than its target a frame may be. The work of a resize grows with it, not with
# the pixel count: scaling the short side of a 16000000x1 frame up to 64 would allocate ~183 GiB, and a
# stretch that grows one side while shrinking the other makes Pillow write an intermediate that many times
# larger than the input. 1000 only stops absurd inputs (a 7x5000 strip still resizes) and keeps the scaled
# frame under 1000x the target's area: under 200 MB for a 256x256 target.
MAX_ASPECT_RATIO = 1000.0


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


def aspect_distortion(h: int, w: int, height: int, width: int) -> float:
    """How many times more elongated an h x w frame is than a height x width target (1: the same shape)."""
    ratio = (w * height) / (h * width)
    return max(ratio, 1 / ratio)


def check_aspect_ratio(h: int, w: int, height: int, width: int, limit: float = MAX_ASPECT_RATIO) -> None:
    """ValueError, before any pixel is touched, when resizing an h x w frame to height x width would distort
    it (stretch) or enlarge it (short side scaled) by more than `limit` times its target's aspect ratio."""
    distortion = aspect_distortion(h, w, height, width)
    if distortion > limit:
        times = f"{distortion:.1f}".removesuffix(".0")
        raise ValueError(f"a {h}x{w} (HxW) frame is {times} times as elongated as its {height}x{width} "
                         f"target, more than the limit of {limit:g}; crop it closer to the target's shape first")


def resize(frames: np.ndarray, height: int, width: int, mode: str = "area",
           max_aspect_ratio: float = MAX_ASPECT_RATIO) -> np.ndarray:
    """Resize every frame to height x width.

    mode "area" (for shrinking; LFDM's choice): each output pixel is the area-weighted mean of the
    source pixels it covers, rounded once, as cv2.INTER_AREA. If either side grows it is bilinear,
    as cv2 also switches (a box would only repeat pixels). "bilinear" is Pillow's, which also
    antialiases when shrinking; "nearest" picks pixels. A frame more than `max_aspect_ratio` times as
    elongated as the target is refused (`check_aspect_ratio`).
    """
    if mode not in _MODES:
        raise ValueError(f"resize mode must be one of {_MODES}, got {mode!r}")
    if height < 1 or width < 1:
        raise ValueError(f"resize target must be at least 1x1, got height={height}, width={width}")
    clip, single = _as_clip(frames)
    h, w = clip.shape[1:3]
    check_aspect_ratio(h, w, height, width, max_aspect_ratio)
    if (h, w) == (height, width):
        out = clip.copy()
    else:
        shrink = height <= h and width <= w
        out = np.empty((len(clip), height, width, 3), np.uint8)
        for i, frame in enumerate(clip):
            if mode == "area" and shrink:
                out[i] = _area_shrink(frame, height, width)
            else:
                resample = _PIL_FILTERS.get(mode, Image.Resampling.BILINEAR)
                out[i] = np.asarray(Image.fromarray(frame).resize((width, height), resample=resample))
    return out[0] if single else out


def _area_sums(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """Sum of `x` over each of `n_out` equal slices of `axis` (n_out <= length), cut pixels pro rata.

    Slice j covers [j*n/n_out, (j+1)*n/n_out): whole pixels [ia, ib) summed by `np.add.reduceat`
    (one pass, nothing full-size written), plus the covered fractions of the pixels cut at either end.
    Positions are exact rationals, so whole-number factors give plain block sums.
    """
    n_in = x.shape[axis]
    j = np.arange(n_out, dtype=np.int64)
    ia = -((-j * n_in) // n_out)                # ceil(j * n_in / n_out): first whole pixel
    ib = ((j + 1) * n_in) // n_out              # floor((j + 1) * n_in / n_out): one past the last
    frac_a = (ia * n_out - j * n_in) / n_out    # share of pixel ia - 1 inside the slice
    frac_b = ((j + 1) * n_in - ib * n_out) / n_out  # share of pixel ib inside the slice
    zero = np.zeros_like(x.take([0], axis=axis))
    xp = np.concatenate([x, zero], axis=axis)   # so index n_in is valid (a zero pixel)
    # reduceat over the interleaved bounds: entry 2j sums [ia_j, ib_j), except that an empty range
    # (ia_j == ib_j) yields xp[ia_j], so it is zeroed by `has_whole`.
    bounds = np.stack([ia, ib], axis=1).ravel()
    acc = np.int64 if x.dtype.kind in "iu" else np.float64
    whole = np.add.reduceat(xp, bounds, axis=axis, dtype=acc).take(2 * j, axis=axis)
    shape = [-1 if a == axis else 1 for a in range(x.ndim)]
    has_whole = (ib > ia).reshape(shape)
    left = xp.take(np.maximum(ia - 1, 0), axis=axis) * frac_a.reshape(shape)
    right = xp.take(ib, axis=axis) * frac_b.reshape(shape)
    return np.where(has_whole, whole, 0) + left + right


def _area_shrink(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = frame.shape[:2]
    sums = _area_sums(_area_sums(frame, width, axis=1), height, axis=0)
    mean = sums / ((h / height) * (w / width))
    return np.clip(np.floor(mean + 0.5), 0, 255).astype(np.uint8)


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


def resize_short_side_and_center_crop(frames: np.ndarray, size: int, mode: str = "area",
                                      max_aspect_ratio: float = MAX_ASPECT_RATIO) -> np.ndarray:
    """Scale so the shorter side is `size` (aspect kept), then centre-crop to size x size.

    The usual way to make square training clips without distorting the content. The scaled frame is
    `aspect ratio` times the crop's area, so a frame longer than `max_aspect_ratio` x its short side is
    refused (ValueError) before anything is allocated.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    clip, _ = _as_clip(frames)
    h, w = clip.shape[1:3]
    check_aspect_ratio(h, w, size, size, max_aspect_ratio)
    scale = size / min(h, w)
    # max(size, ...) guards the long side against rounding below `size` on extreme aspect ratios.
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    return center_crop(resize(frames, new_h, new_w, mode=mode, max_aspect_ratio=max_aspect_ratio), size, size)
