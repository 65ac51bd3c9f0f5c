"""Spaces by name: a mapping filled by `@register_space`, and building a space from settings or a saved state.

Adding a space is one file whose class is decorated with `@register_space`, imported once (the built-in
spaces by `dvdm/spaces/__init__.py`). Nothing here or elsewhere branches on a space's name.
"""

from __future__ import annotations

from typing import Any, TypeVar

from dvdm.errors import ConfigError

SPACES: dict[str, type] = {}
Space = TypeVar("Space", bound=type)


def register_space(cls: Space) -> Space:
    """Class decorator: make `cls` available under `cls.name`."""
    name = getattr(cls, "name", "")
    if not name or SPACES.get(name, cls) is not cls:
        raise ValueError(f"cannot register space {cls.__name__}: name {name!r} is empty or taken")
    SPACES[name] = cls
    return cls


def space_class(name: str) -> Any:
    """The class registered as `name` (ConfigError naming the known spaces otherwise)."""
    if name not in SPACES:
        raise ConfigError(f"unknown target space {name!r}; choose one of {', '.join(SPACES)}")
    return SPACES[name]


def build_space(name: str, codec: Any = None, **settings: Any) -> Any:
    """A space for training, from its settings (each space reads the ones it declares); `codec` is the
    trained residual codec for spaces that need one."""
    known = {key for cls in SPACES.values() for key in cls.settings}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown space setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return space_class(name).from_settings(settings, codec)


def target_sizes(frames: int, height: int, width: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Values each registered space generates per clip, and how many times smaller that is than the RGB
    clip (all T frames, the paper's comparison). `settings` needs what the spaces' `target_elements` read
    (block, latent_channels)."""
    clip = frames * height * width * 3
    sizes = {name: cls.target_elements(frames, height, width, settings) for name, cls in SPACES.items()}
    return {"clip_values": clip, "values": sizes, "ratio_vs_rgb": {k: round(clip / v, 2) for k, v in sizes.items()},
            **{k: settings[k] for k in ("block", "latent_channels") if k in settings}}


def space_from_state(state: dict[str, Any], codec: Any = None) -> Any:
    """Inverse of `TargetSpace.state()`; `codec` supplies the trained residual codec where one is needed."""
    from dvdm.spaces.base import Normalizer

    space = space_class(state["name"]).from_config(state.get("config", {}), codec)
    if state.get("normalizer"):
        space.normalizer = Normalizer(**state["normalizer"])
    return space
