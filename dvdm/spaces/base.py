"""The interface every target space implements, and the per-channel normalisation they share.

A space maps a uint8 clip (T, H, W, 3) to a float32 *raw* target (C, T-1, h, w) for frames 1..T-1 and back,
given the first frame. Diffusion runs on the *normalised* target `(raw - mean[c]) / std[c]`, with the
statistics measured on the training set and saved with the model (`dvdm.runtime.normalize`, which the
service applies too), so every space reaches the denoiser at about unit variance.

A space owns its whole contract, so nothing outside `dvdm/spaces/` needs its name: how it is built from
settings (`from_settings`) and from a saved model (`from_config`), whether it needs the trained residual
codec (`needs_codec`), its target's shape and size, its one-line `description` (model cards, reports) and
its decode as a manifest `decode` block (`decode_spec`), which is also how it decodes (`dvdm.runtime.decode`),
so the library and the torch-free service run one decoder.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from dvdm.runtime.decode import decode_target
from dvdm.runtime.normalize import Normalizer


class TargetSpace(ABC):
    """One way of turning a clip into what the diffusion model generates."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # the settings `from_settings` reads (keys of the train section / codec settings); others are ignored
    settings: ClassVar[tuple[str, ...]] = ()
    # True: the space is built around the trained residual codec (the autoencoder of stage train-ae)
    needs_codec: ClassVar[bool] = False

    def __init__(self) -> None:
        self.normalizer: Normalizer | None = None

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], codec: Any = None) -> TargetSpace:
        """The space for training, from the settings it declares in `settings` (others are ignored)."""
        return cls(**{k: settings[k] for k in cls.settings if k in settings})

    @classmethod
    def from_config(cls, config: Mapping[str, Any], codec: Any = None) -> TargetSpace:
        """Inverse of `config()`: the space a saved model was trained in."""
        return cls(**config)

    @classmethod
    def target_elements(cls, frames: int, height: int, width: int, settings: Mapping[str, Any]) -> int:
        """Values generated per clip (sizes in reports, before any codec is trained)."""
        return int(np.prod(cls.from_settings(settings).target_shape(frames, height, width)))

    # -- geometry -------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def channels(self) -> int:
        """Channels of the target."""

    @abstractmethod
    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the target for an H x W clip."""

    def target_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T-1, h, w): the model generates frames 1..T-1; frame 0 is the given content."""
        return (self.channels, frames - 1, *self.grid(height, width))

    # -- the map --------------------------------------------------------------------------------------
    @abstractmethod
    def encode(self, video: np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) -> raw float32 target (C, T-1, h, w)."""

    @abstractmethod
    def decode_spec(self) -> dict[str, Any]:
        """The torch-free description of `decode`: a `dvdm.runtime.decode` block (JSON, in the manifest)."""

    def residual_decoder(self, size: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray] | None:
        """For `motion_residual` decodes: latents (N, k, gh, gw) -> residuals (N, 3, H, W) in pixels."""
        return None

    def decode(self, target: np.ndarray, first_frame: np.ndarray) -> np.ndarray:
        """Raw target (C, T-1, h, w) + first frame uint8 (H, W, 3) -> uint8 clip (T, H, W, 3)."""
        return decode_target(self.decode_spec(), target, first_frame, self.residual_decoder(first_frame.shape[:2]))

    # -- normalisation --------------------------------------------------------------------------------
    def fit_normalizer(self, raw_targets: list[np.ndarray]) -> Normalizer:
        self.normalizer = Normalizer.fit(raw_targets)
        return self.normalizer

    def _norm(self) -> Normalizer:
        if self.normalizer is None:
            raise RuntimeError(f"space {self.name}: normalisation statistics are not fitted or loaded")
        return self.normalizer

    def normalize(self, raw):
        return self._norm().normalize(raw)

    def denormalize(self, x):
        return self._norm().denormalize(x)

    # -- persistence ----------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON)."""
        return {}

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild the space except large weights: name, config, statistics."""
        return {"name": self.name, "config": self.config(),
                "normalizer": None if self.normalizer is None else self.normalizer.state()}


class PixelSpace(TargetSpace):
    """A space whose target is 3 colour channels on the full-resolution frame grid (rgb, diff)."""

    @property
    def channels(self) -> int:
        return 3

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height, width
