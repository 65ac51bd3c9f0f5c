"""`mvres`: ED-VDM. The model generates, on the block grid, 2 motion-vector channels (pixels, (dx, dy),
backward convention) concatenated with the residual codec's latent channels.

Encoding runs the codec closed loop (DESIGN.md section 3): each residual is taken against the previous
frame *as the decoder will see it* (motion-compensated previous reconstruction + decoded residual), so
the autoencoder's error does not drift along the clip. Decoding turns the sampled vectors into integers
with a dead zone (`dvdm.codec.quantize`), motion-compensates from the decoded previous frame and adds the
decoded residual, frame by frame (`dvdm.codec.residuals.reconstruct`).

The residual codec is pluggable: `AutoencoderResidualCodec` (the trained autoencoder, the paper's setting)
or `PixelUnshuffleResidualCodec` (lossless: the raw residual folded onto the grid, 3*b*b channels), which
makes the space exactly invertible for tests.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from dvdm.codec.compensate import grid_shape
from dvdm.codec.decompose import DecomposeConfig, decompose
from dvdm.codec.quantize import DEFAULT_DEAD_ZONE, check_dead_zone, quantize_motion
from dvdm.codec.residuals import reconstruct
from dvdm.spaces.base import TargetSpace


class ResidualCodec(Protocol):
    """Maps residual frames (N, H, W, 3) in pixel units to latents (N, k, gh, gw) on the block grid."""

    block: int
    latent_channels: int

    def encode(self, residual: np.ndarray) -> np.ndarray: ...

    def decode(self, latent: np.ndarray, size: tuple[int, int]) -> np.ndarray: ...


class PixelUnshuffleResidualCodec:
    """Lossless codec: each block's residual pixels become its 3*b*b channels (space-to-depth)."""

    def __init__(self, block: int):
        self.block = block
        self.latent_channels = 3 * block * block

    def encode(self, residual: np.ndarray) -> np.ndarray:
        n, h, w, c = residual.shape
        b = self.block
        gh, gw = grid_shape(h, w, b)
        padded = np.zeros((n, gh * b, gw * b, c), np.float32)
        padded[:, :h, :w] = residual
        return padded.reshape(n, gh, b, gw, b, c).transpose(0, 5, 2, 4, 1, 3).reshape(n, c * b * b, gh, gw)

    def decode(self, latent: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        n, _, gh, gw = latent.shape
        b, (h, w) = self.block, size
        x = np.asarray(latent, np.float32).reshape(n, 3, b, b, gh, gw).transpose(0, 4, 2, 5, 3, 1)
        return x.reshape(n, gh * b, gw * b, 3)[:, :h, :w]


class MVResSpace(TargetSpace):
    name = "mvres"

    def __init__(self, codec: ResidualCodec, search: int | None = None, strategy: str = "fast",
                 dead_zone: float = DEFAULT_DEAD_ZONE, match: str = "luma", static_threshold: float = 0.0):
        super().__init__()
        self.codec = codec
        self.dead_zone = float(dead_zone)
        self.block = codec.block
        self.search = search or codec.block
        self.strategy = strategy
        self.match = match
        self.static_threshold = float(static_threshold)
        self._decompose_config = DecomposeConfig(block=self.block, search=self.search, strategy=strategy,
                                                 static_threshold=self.static_threshold, match=match)
        check_dead_zone(self.dead_zone, self.search)  # a bad dead zone fails here, not at decode

    @property
    def channels(self) -> int:
        return 2 + self.codec.latent_channels

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return grid_shape(height, width, self.block)

    def encode(self, video: np.ndarray) -> np.ndarray:
        h, w = video.shape[1:3]
        latents: list[np.ndarray] = []

        def roundtrip(residual: np.ndarray) -> np.ndarray:
            z = self.codec.encode(residual[None].astype(np.float32))
            latents.append(z[0])
            return self.codec.decode(z, (h, w))[0]

        d = decompose(video, self._decompose_config, roundtrip=roundtrip)
        mv = d.mv.astype(np.float32).transpose(3, 0, 1, 2)                  # (2, T-1, gh, gw)
        z = np.stack(latents, axis=1)                                       # (k, T-1, gh, gw)
        return np.concatenate([mv, z], axis=0).astype(np.float32)

    def decode(self, target: np.ndarray, first_frame: np.ndarray) -> np.ndarray:
        target = np.asarray(target, np.float32)
        h, w = first_frame.shape[:2]
        mv = quantize_motion(target[:2], self.search, self.dead_zone).transpose(1, 2, 3, 0)
        residual = self.codec.decode(target[2:].transpose(1, 0, 2, 3), (h, w))
        return reconstruct(first_frame, mv, residual, self.block)

    def config(self) -> dict[str, Any]:
        return {"block": self.block, "search": self.search, "strategy": self.strategy, "match": self.match,
                "static_threshold": self.static_threshold, "dead_zone": self.dead_zone,
                "latent_channels": self.codec.latent_channels, "codec": type(self.codec).__name__}
