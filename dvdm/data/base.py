"""What every data source yields, and how clips are cut from longer videos.

A source is an iterable of `Clip`s. It owns the dataset-specific parts (layout, crops, splits, captions);
everything after it (shards, manifest, decomposition) only sees `Clip`s of one fixed size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClipSpec:
    """How clips are cut from a source video: length, output size and temporal sampling.

    `sampling="uniform"` spreads `frames` indices evenly over the whole video (LFDM's test loader);
    `"stride"` takes a window of `frames` frames every `stride`-th frame starting at `start`.
    `pad_short` repeats the last frame of a video that is too short (LFDM's behaviour) instead of
    rejecting it.
    """

    frames: int = 16
    height: int = 64
    width: int = 64
    sampling: str = "uniform"
    stride: int = 1
    start: int = 0
    pad_short: bool = False

    def __post_init__(self) -> None:
        from dvdm.errors import ConfigError

        if self.frames < 2:
            raise ConfigError(f"frames must be >= 2 (a first frame and at least one frame of motion), got {self.frames}")
        if self.height < 8 or self.width < 8:
            raise ConfigError(f"clip size must be at least 8x8, got {self.height}x{self.width}")
        if self.sampling not in ("uniform", "stride"):
            raise ConfigError(f"sampling must be 'uniform' or 'stride', got {self.sampling!r}")
        if self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        if self.start < 0:
            raise ConfigError(f"start must be >= 0, got {self.start}")


@dataclass
class Clip:
    """One training/evaluation example.

    frames: uint8 array (T, H, W, 3). caption: the text condition ("" for unconditional data such as BAIR).
    split: one of SPLITS. provenance: where it came from (file, frame indices, crop, original size, fps),
    enough to find it again. labels: ground truth kept for evaluation (synthetic motion, class id, subject).
    """

    id: str
    frames: np.ndarray
    caption: str
    split: str
    source: str
    provenance: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise ValueError(f"clip {self.id}: frames must be uint8 (T, H, W, 3), got {self.frames.dtype} "
                             f"{self.frames.shape}")
        if self.split not in SPLITS:
            raise ValueError(f"clip {self.id}: split must be one of {SPLITS}, got {self.split!r}")


class Source(Protocol):
    """A dataset: iterating it yields clips in a deterministic order."""

    name: str

    def __iter__(self) -> Iterator[Clip]: ...
