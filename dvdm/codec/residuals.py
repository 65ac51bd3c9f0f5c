"""Closed-loop residuals and their exact inverse.

Like a real encoder, each residual is taken against the *reconstructed* previous frame, so that a lossy
residual codec (the ED-VDM autoencoder) does not let error drift across frames: the encoder runs the
decoder inside its loop. With raw int16 residuals the reconstruction is bit-exact.

numpy only (decoder side, shared with serving).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from dvdm.codec.compensate import grid_shape, motion_compensate

ResidualRoundTrip = Callable[[np.ndarray], np.ndarray]
"""Maps a raw residual (H, W, 3) int16 to what the decoder will see (e.g. autoencoder encode+decode)."""


def _check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[0] < 2:
        raise ValueError(f"a clip needs at least 2 frames to have motion, got {frames.shape[0]}")


def closed_loop_residuals(frames: np.ndarray, mv: np.ndarray, block: int,
                          roundtrip: ResidualRoundTrip | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Residuals of frames 1..T-1 given their motion vectors.

    Returns (residual (T-1, H, W, 3) int16, reconstruction (T, H, W, 3) uint8). Without `roundtrip` the
    reconstruction equals `frames` and all residuals come from one vectorised compensation; with it,
    frames are processed in order and each prediction uses the previous *reconstructed* frame.
    """
    _check_frames(frames)
    t, h, w, _ = frames.shape
    if mv.shape != (t - 1, *grid_shape(h, w, block), 2):
        raise ValueError(f"motion field shape {mv.shape} does not match {t} frames of {h}x{w} with block {block}")
    if roundtrip is None:
        pred = motion_compensate(frames[:-1], mv, block)
        residual = frames[1:].astype(np.int16) - pred.astype(np.int16)
        return residual, frames
    residual = np.empty((t - 1, h, w, 3), np.int16)
    recon = np.empty_like(frames)
    recon[0] = frames[0]
    for i in range(1, t):
        pred = motion_compensate(recon[i - 1], mv[i - 1], block).astype(np.int16)
        residual[i - 1] = frames[i].astype(np.int16) - pred
        decoded = np.asarray(roundtrip(residual[i - 1]))
        recon[i] = np.clip(pred + np.rint(decoded).astype(np.int16), 0, 255).astype(np.uint8)
    return residual, recon


def reconstruct(first_frame: np.ndarray, mv: np.ndarray, residual: np.ndarray, block: int) -> np.ndarray:
    """Decode: motion-compensate from the previous decoded frame and add the residual, frame by frame.

    Exact inverse of `closed_loop_residuals` for raw residuals. `residual` may be float (decoded by an
    autoencoder); it is rounded and the result clipped to uint8.
    """
    if first_frame.dtype != np.uint8 or first_frame.ndim != 3:
        raise ValueError(f"first frame must be uint8 (H, W, 3), got {first_frame.dtype} {first_frame.shape}")
    n = residual.shape[0]
    if mv.shape[0] != n:
        raise ValueError(f"{mv.shape[0]} motion fields but {n} residuals")
    h, w, c = first_frame.shape
    out = np.empty((n + 1, h, w, c), np.uint8)
    out[0] = first_frame
    exact = residual.dtype.kind in "iu"
    for i in range(n):
        pred = motion_compensate(out[i], mv[i], block).astype(np.int16)
        r = residual[i] if exact else np.rint(residual[i])
        out[i + 1] = np.clip(pred + r.astype(np.int16), 0, 255).astype(np.uint8)
    return out
