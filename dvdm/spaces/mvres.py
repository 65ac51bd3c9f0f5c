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

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from dvdm.codec.compensate import grid_shape
from dvdm.codec.decompose import DecomposeConfig, decompose
from dvdm.codec.quantize import DEFAULT_DEAD_ZONE, check_dead_zone
from dvdm.codec.search import SearchConfig
from dvdm.errors import ConfigError
from dvdm.runtime.decode import RESIDUAL_GRAPH
from dvdm.spaces.base import TargetSpace
from dvdm.spaces.registry import register_space

MOTION_CHANNELS = 2  # (dx, dy) per block


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


@register_space
class MVResSpace(TargetSpace):
    name = "mvres"
    description = ("ED-VDM: the denoiser generates per-block motion vectors + autoencoded residuals, decoded by "
                   "motion compensation")
    # dead_zone: how sampled vectors are rounded; the rest: the motion search the residual codec was
    # trained on (decompose's settings, carried by the autoencoder checkpoint)
    settings = ("block", "search", "strategy", "dead_zone", "match", "static_threshold")
    needs_codec = True

    def __init__(self, codec: ResidualCodec, search: int | None = None, strategy: str = SearchConfig.strategy,
                 dead_zone: float = DEFAULT_DEAD_ZONE, match: str = SearchConfig.match,
                 static_threshold: float = SearchConfig.static_threshold):
        super().__init__()
        self.codec = codec
        self.dead_zone = float(dead_zone)
        self.block = codec.block
        self.search = search or codec.block
        self.strategy = strategy
        self.match = match
        self.static_threshold = float(static_threshold)
        try:
            self._decompose_config = DecomposeConfig(block=self.block, search=self.search, strategy=strategy,
                                                     static_threshold=self.static_threshold, match=match)
            check_dead_zone(self.dead_zone, self.search)  # a bad dead zone fails here, not at decode
        except ValueError as exc:
            raise ConfigError(f"mvres: {exc}") from None

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], codec: ResidualCodec | None = None) -> MVResSpace:
        """With the trained autoencoder as `codec` (training); without one, the lossless codec (tests)."""
        kwargs = {k: settings[k] for k in cls.settings if k in settings and k != "block"}
        return cls(codec or PixelUnshuffleResidualCodec(settings.get("block", 16)), **kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], codec: ResidualCodec | None = None) -> MVResSpace:
        # models saved before a setting existed: plain rounding (dead zone 0.5), luma matching, no threshold
        space = cls(codec or PixelUnshuffleResidualCodec(config["block"]), search=config["search"],
                    strategy=config["strategy"], dead_zone=config.get("dead_zone", DEFAULT_DEAD_ZONE),
                    match=config.get("match", "luma"), static_threshold=config.get("static_threshold", 0.0))
        if space.codec.latent_channels != config["latent_channels"]:
            raise ConfigError(f"mvres: the residual codec has {space.codec.latent_channels} latent channels, the "
                              f"saved model expects {config['latent_channels']}")
        return space

    @classmethod
    def target_elements(cls, frames: int, height: int, width: int, settings: Mapping[str, Any]) -> int:
        # before the autoencoder exists: its latent sits on the motion-vector grid
        gh, gw = grid_shape(height, width, settings["block"])
        return (frames - 1) * gh * gw * (MOTION_CHANNELS + settings["latent_channels"])

    @property
    def channels(self) -> int:
        return MOTION_CHANNELS + self.codec.latent_channels

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

    def decode_spec(self) -> dict[str, Any]:
        return {"method": "motion_residual", "block": int(self.block), "search": int(self.search),
                "motion_channels": MOTION_CHANNELS, "dead_zone": float(self.dead_zone),
                "residual": {"graph": RESIDUAL_GRAPH, "latent_channels": int(self.codec.latent_channels)}}

    def residual_decoder(self, size: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
        return lambda latent: self.codec.decode(latent, size).transpose(0, 3, 1, 2)

    def config(self) -> dict[str, Any]:
        return {"block": self.block, "search": self.search, "strategy": self.strategy, "match": self.match,
                "static_threshold": self.static_threshold, "dead_zone": self.dead_zone,
                "latent_channels": self.codec.latent_channels, "codec": type(self.codec).__name__}
