"""Decompose a clip into first frame + block motion vectors + residuals (ED-VDM's codec view), and back.

`decompose(frames, config)` -> `MotionDecomposition`; `.reconstruct()` is its exact inverse for raw
residuals, for any frame size (partial edge blocks are handled by clamped compensation, no padding is
stored). Motion vectors come from our SAD search (`mv_source="search"`) or from FFmpeg's libx264
(`"ffmpeg"`); residuals are computed the same way for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dvdm.codec.compensate import grid_shape
from dvdm.codec.kernels import residual_kernel
from dvdm.codec.residuals import ResidualRoundTrip, closed_loop_residuals, reconstruct
from dvdm.codec.search import SearchConfig, match_blocks, match_planes

MV_SOURCES = ("search", "ffmpeg")


@dataclass(frozen=True)
class DecomposeConfig:
    """block/search/strategy/static_threshold/match: see `SearchConfig`. mv_source: "search" or "ffmpeg"."""

    block: int = SearchConfig.block
    search: int = SearchConfig.search
    strategy: str = SearchConfig.strategy
    static_threshold: float = SearchConfig.static_threshold
    mv_source: str = "search"
    match: str = SearchConfig.match

    def __post_init__(self) -> None:
        from dvdm.errors import ConfigError

        if self.mv_source not in MV_SOURCES:
            raise ConfigError(f"mv_source must be one of {MV_SOURCES}, got {self.mv_source!r}")
        self.search_config()  # validates the rest

    def search_config(self) -> SearchConfig:
        return SearchConfig(self.block, self.search, self.strategy, self.static_threshold, self.match)

    @staticmethod
    def default_block(height: int, width: int) -> int:
        """16 (an H.264 macroblock) unless the clip is 64x64 or smaller, where 8 keeps an 8x8 grid."""
        return 8 if max(height, width) <= 64 else 16


@dataclass
class MotionDecomposition:
    """first_frame (H, W, 3) uint8; mv (T-1, gh, gw, 2) int16 (dx, dy), backward; residual (T-1, H, W, 3)
    int16; valid (T-1, gh, gw) bool: blocks whose vector came from the motion source (FFmpeg leaves holes
    at intra blocks)."""

    first_frame: np.ndarray
    mv: np.ndarray
    residual: np.ndarray
    block: int
    valid: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.residual.shape[0] + 1

    @property
    def grid(self) -> tuple[int, int]:
        return self.mv.shape[1], self.mv.shape[2]

    def reconstruct(self) -> np.ndarray:
        return reconstruct(self.first_frame, self.mv, self.residual, self.block)


def decompose(frames: np.ndarray, config: DecomposeConfig | None = None,
              roundtrip: ResidualRoundTrip | None = None) -> MotionDecomposition:
    """Split a uint8 (T, H, W, 3) clip into first frame + motion vectors + closed-loop residuals.

    Without `roundtrip` (raw residuals), the reconstruction equals the clip, so all frame pairs are
    searched in one batch. With it (a lossy residual codec, e.g. the autoencoder), frames are processed in
    order and both the search and the residual use the previous *reconstructed* frame.
    """
    config = config or DecomposeConfig()
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[0] < 2:
        raise ValueError(f"a clip needs at least 2 frames to have motion, got {frames.shape[0]}")
    frames = np.ascontiguousarray(frames)
    t, h, w, _ = frames.shape
    b = config.block
    valid = None
    info: dict[str, Any] = {"mv_source": config.mv_source}

    if config.mv_source == "ffmpeg":
        from dvdm.codec.ffmpeg_mv import ffmpeg_motion_vectors

        mv, valid, ff_info = ffmpeg_motion_vectors(frames, b, return_info=True)
        info.update(ff_info)
        residual, _ = closed_loop_residuals(frames, mv, b, roundtrip)
    elif roundtrip is None:
        planes = match_planes(frames, config.match)
        mv = match_blocks(planes[1:], planes[:-1], config.search_config())
        residual = residual_kernel(frames[1:], frames[:-1], mv, b)
    else:
        mv = np.zeros((t - 1, *grid_shape(h, w, b), 2), np.int16)
        residual = np.empty((t - 1, h, w, 3), np.int16)
        recon = frames[0]
        prev = None
        for i in range(1, t):
            mv[i - 1] = match_blocks(frames[i:i + 1], recon[None], config.search_config(), prev)[0]
            prev = mv[i - 1]
            r, rec = closed_loop_residuals(np.stack([recon, frames[i]]), mv[i - 1:i], b, roundtrip)
            residual[i - 1] = r[0]
            recon = rec[1]
    return MotionDecomposition(frames[0].copy(), mv, residual, b, valid, info)
