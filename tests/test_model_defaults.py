"""One source of defaults for the models: what the default preset's `train.unet` / `train.diffusion` set is
the library's default too (issue 12: the UNet was 64 x (1, 2, 4) in the library and 32 x (1, 2) in the
preset, the prediction eps in `GaussianDiffusion` and v in the stage), so a model built in Python with
defaults is the main job's model."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import yaml

from dvdm.diffusion import GaussianDiffusion
from dvdm.models import UNetConfig

PRESET = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvdm/presets/default.yaml").read_text())


def test_unet_config_defaults_are_the_preset():
    defaults = dataclasses.asdict(UNetConfig(in_channels=3, out_channels=3))
    for key, value in PRESET["train"]["unet"].items():
        expected = tuple(value) if isinstance(value, list) else value
        assert defaults[key] == expected, f"train.unet.{key}: UNetConfig {defaults[key]!r}, preset {value!r}"


def test_diffusion_defaults_are_the_preset():
    signature = inspect.signature(GaussianDiffusion.create).parameters
    for key, value in PRESET["train"]["diffusion"].items():
        assert signature[key].default == value, f"train.diffusion.{key}: {signature[key].default!r} vs {value!r}"
    assert GaussianDiffusion.create().prediction == PRESET["train"]["diffusion"]["prediction"]


def test_codec_search_defaults_are_the_preset():
    from dvdm.codec.decompose import DecomposeConfig
    from dvdm.codec.search import SearchConfig

    for key in ("strategy", "static_threshold", "match"):
        value = PRESET["decompose"][key]
        assert getattr(SearchConfig(), key) == getattr(DecomposeConfig(), key) == value, key
