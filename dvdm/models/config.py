"""`UNetConfig`: everything that shapes the denoiser, saved with every model.

The denoiser never learns which target space it serves (DESIGN.md section 1): `rgb`, `diff` and `mvres`
differ only in `in_channels`/`out_channels` here and in the grid of the tensor it is called with.
`dataclasses.asdict(config)` is JSON-serialisable (tuples become lists); `UNetConfig.from_dict` reads it
back and rejects unknown keys, so a typo never builds a different network silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dvdm.errors import ConfigError


class ModelConfigError(ConfigError, ValueError):
    """An invalid model setting or an input the configured model cannot take (e.g. a grid that does not
    halve cleanly). A `ValueError` for library callers and a `ConfigError` (one clear line) for the CLI."""


@dataclass
class UNetConfig:
    """Shape of the 3D UNet denoiser and of its first-frame and text conditioning.

    in_channels / out_channels: channels of the generated tensor (3 for rgb/diff, 2 + k for mvres).
    base_channels, channel_mults: width of each resolution level (level i has base * mults[i] channels);
        the grid is halved between levels, so it must be divisible by 2 ** (len(channel_mults) - 1).
    num_res_blocks: ResBlocks per level on the way down (one more on the way up, as in improved-diffusion).
    spatial_attention: per level, whether to add spatial self-attention after each ResBlock.
    temporal_attention: temporal self-attention after each ResBlock at every level.
    attention_heads, attention_head_dim: attention width = heads * head_dim, independent of the channels.
    text_dim: size of the frozen sentence embedding (384 for all-MiniLM-L6-v2); 0 = no text path.
    cond_drop_prob: probability of replacing the text by the learned null embedding in training
        (classifier-free guidance).
    text_whitening: whiten the sentence embedding (ZCA, fitted on the training captions with
        `UNet3D.fit_text_whitening`, saved as buffers) before the text MLP, so the words captions differ in
        (direction, speed) weigh as much as those that dominate the embedding (colour, shape).
    image_channels: channels of the first frame; image_feature_channels: channels of its encoding that are
        concatenated to the input; image_encoder_base / image_encoder_blocks: width and depth of the
        first-frame ResNet encoder.
    """

    in_channels: int
    out_channels: int
    # the defaults are the default preset's `train.unet` (checked by a test); what the preset does not set
    # (dropout, image encoder, text_dim) is defined only here
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    spatial_attention: tuple[bool, ...] = (False, True)
    temporal_attention: bool = True
    attention_heads: int = 4
    attention_head_dim: int = 16
    dropout: float = 0.0
    text_dim: int = 384
    cond_drop_prob: float = 0.1
    text_whitening: bool = True
    image_channels: int = 3
    image_feature_channels: int = 32
    image_encoder_base: int = 32
    image_encoder_blocks: int = 2

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so configs compare equal and hash-like uses stay stable.
        self.channel_mults = tuple(self.channel_mults)
        self.spatial_attention = tuple(self.spatial_attention)
        problems = []
        for name in ("in_channels", "out_channels", "base_channels", "num_res_blocks", "attention_heads",
                     "attention_head_dim", "image_channels", "image_feature_channels", "image_encoder_base"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("text_dim", "image_encoder_blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{name} must be an integer >= 0, got {value!r}")
        if not self.channel_mults:
            problems.append("channel_mults must name at least one level")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.channel_mults):
            problems.append(f"channel_mults must be positive integers, got {list(self.channel_mults)}")
        if len(self.spatial_attention) != len(self.channel_mults):
            problems.append(f"spatial_attention has {len(self.spatial_attention)} entries but channel_mults has "
                            f"{len(self.channel_mults)} levels (one flag per level)")
        if any(not isinstance(flag, bool) for flag in self.spatial_attention):
            problems.append(f"spatial_attention must be true/false flags, got {list(self.spatial_attention)}")
        for name in ("temporal_attention", "text_whitening"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true/false, got {getattr(self, name)!r}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) \
                or not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.cond_drop_prob, (int, float)) or isinstance(self.cond_drop_prob, bool) \
                or not 0.0 <= self.cond_drop_prob <= 1.0:
            problems.append(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob!r}")
        if problems:
            raise ModelConfigError("UNetConfig: " + "; ".join(problems))
        self.dropout = float(self.dropout)
        self.cond_drop_prob = float(self.cond_drop_prob)

    @property
    def num_levels(self) -> int:
        return len(self.channel_mults)

    @property
    def grid_multiple(self) -> int:
        """The grid's height and width must be multiples of this (the UNet halves it between levels)."""
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.base_channels

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-ready dict (lists instead of tuples)."""
        data = dataclasses.asdict(self)
        data["channel_mults"] = list(self.channel_mults)
        data["spatial_attention"] = list(self.spatial_attention)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Inverse of `dataclasses.asdict`/`to_dict`; unknown or missing required keys are errors."""
        if not isinstance(data, dict):
            raise ModelConfigError(f"UNetConfig: expected a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ModelConfigError(f"UNetConfig: unknown key(s) {', '.join(unknown)}; known: {', '.join(names)}")
        missing = [n for n in ("in_channels", "out_channels") if n not in data]
        if missing:
            raise ModelConfigError(f"UNetConfig: missing required key(s) {', '.join(missing)}")
        return cls(**data)
