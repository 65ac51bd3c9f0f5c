"""Spaces by name, and rebuilding a space from its saved state."""

from __future__ import annotations

from typing import Any

from dvdm.codec.quantize import DEFAULT_DEAD_ZONE
from dvdm.errors import ConfigError
from dvdm.spaces.base import Normalizer, TargetSpace
from dvdm.spaces.diff import DiffSpace
from dvdm.spaces.mvres import MVResSpace, PixelUnshuffleResidualCodec
from dvdm.spaces.rgb import RGBSpace

SPACES = ("rgb", "diff", "mvres")


def build_space(name: str, *, reference: str = "first", codec=None, block: int = 16, search: int | None = None,
                strategy: str = "fast", dead_zone: float = DEFAULT_DEAD_ZONE, match: str = "luma",
                static_threshold: float = 0.0) -> TargetSpace:
    """A space by name. `mvres` takes a residual codec (the autoencoder); without one it is lossless."""
    if name == "rgb":
        return RGBSpace()
    if name == "diff":
        return DiffSpace(reference)
    if name == "mvres":
        try:
            return MVResSpace(codec or PixelUnshuffleResidualCodec(block), search=search, strategy=strategy,
                              dead_zone=dead_zone, match=match, static_threshold=static_threshold)
        except ValueError as exc:
            raise ConfigError(f"mvres: {exc}") from None
    raise ConfigError(f"unknown target space {name!r}; choose one of {', '.join(SPACES)}")


def space_from_state(state: dict[str, Any], codec=None) -> TargetSpace:
    """Inverse of `TargetSpace.state()`; `codec` supplies the autoencoder for `mvres`."""
    cfg = state.get("config", {})
    name = state["name"]
    if name == "mvres":
        # models saved before a setting existed: plain rounding (dead zone 0.5), luma matching, no threshold
        space = build_space(name, codec=codec, block=cfg["block"], search=cfg["search"], strategy=cfg["strategy"],
                            dead_zone=cfg.get("dead_zone", DEFAULT_DEAD_ZONE), match=cfg.get("match", "luma"),
                            static_threshold=cfg.get("static_threshold", 0.0))
        if space.channels != 2 + cfg["latent_channels"]:
            raise ConfigError(f"mvres: the residual codec has {space.channels - 2} latent channels, the saved "
                              f"model expects {cfg['latent_channels']}")
    else:
        space = build_space(name, **{k: v for k, v in cfg.items() if k == "reference"})
    if state.get("normalizer"):
        space.normalizer = Normalizer(**state["normalizer"])
    return space
