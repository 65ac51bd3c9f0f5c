"""Block motion compensation: predict a frame from a reference frame and one vector per block.

Convention (the same as FFmpeg's exported motion vectors): a block's vector (dx, dy) points *backwards*,
to where the block came from: `pred[y, x] = ref[y + dy, x + dx]` for every pixel of the block, with
coordinates clamped to the frame (H.264's "unrestricted" vectors: the reference is extended by repeating
its border pixels). Blocks on the right/bottom edge may be partial when H or W is not a multiple of the
block size; they still own one vector.

numpy only: this is decoder code, shared with serving.
"""

from __future__ import annotations

import numpy as np


def grid_shape(height: int, width: int, block: int) -> tuple[int, int]:
    """Number of block rows and columns that cover an H x W frame (partial edge blocks count)."""
    return -(-height // block), -(-width // block)


def motion_compensate(ref: np.ndarray, mv: np.ndarray, block: int) -> np.ndarray:
    """Predict frame(s) from `ref` and block motion vectors.

    ref: (H, W, C) or (N, H, W, C), any dtype. mv: (gh, gw, 2) or (N, gh, gw, 2) integer (dx, dy).
    Returns an array shaped like `ref`. Blocks whose vector is zero are plain copies, so the cost scales
    with the amount of motion, not with the frame size.
    """
    single = ref.ndim == 3
    if single:
        ref, mv = ref[None], mv[None]
    n, h, w, c = ref.shape
    gh, gw = grid_shape(h, w, block)
    if mv.shape != (n, gh, gw, 2):
        raise ValueError(f"motion field shape {mv.shape} does not match {n} frame(s) of {h}x{w} "
                         f"with block {block} (expected {(n, gh, gw, 2)})")
    pred = ref.copy()
    moving = np.nonzero(mv[..., 0] | mv[..., 1])
    if moving[0].size:
        hp, wp = gh * block, gw * block
        if (hp, wp) != (h, w):
            # work on the block grid, crop back at the end
            full = np.empty((n, hp, wp, c), ref.dtype)
            full[:, :h, :w] = ref
            pred = full
        k_n, k_y, k_x = moving
        dx = mv[k_n, k_y, k_x, 0].astype(np.intp)
        dy = mv[k_n, k_y, k_x, 1].astype(np.intp)
        offs = np.arange(block, dtype=np.intp)
        # source rows/cols for every pixel of every moving block, clamped to the real frame
        rows = np.clip((k_y * block)[:, None] + offs[None, :] + dy[:, None], 0, h - 1)   # (K, b)
        cols = np.clip((k_x * block)[:, None] + offs[None, :] + dx[:, None], 0, w - 1)   # (K, b)
        patches = ref[k_n[:, None, None], rows[:, :, None], cols[:, None, :]]          # (K, b, b, C)
        view = pred.reshape(n, gh, block, gw, block, c)
        view[k_n, k_y, :, k_x, :, :] = patches
        pred = pred[:, :h, :w]
        if not pred.flags.c_contiguous:
            pred = np.ascontiguousarray(pred)
    return pred[0] if single else pred
