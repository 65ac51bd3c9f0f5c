"""Settings read from YAML or `--set` get the type their dataclass field has, or a clear ConfigError."""

from __future__ import annotations

import pytest

from dvdm.config import TrainParams, from_dict
from dvdm.errors import ConfigError


def test_a_float_setting_written_like_1e_5_is_a_number():
    # YAML 1.1 reads `1e-5` (no dot) as a string: `--set lr=1e-5` used to fail inside the optimizer
    assert from_dict(TrainParams, {"lr": "1e-5"}, "train").lr == 1e-5
    assert from_dict(TrainParams, {"lr": 3}, "train").lr == 3.0


@pytest.mark.parametrize("value", ["fast", True, [1e-4]])
def test_a_float_setting_that_is_not_a_number_is_named(value):
    with pytest.raises(ConfigError, match=r"train\.lr: expected a number"):
        from_dict(TrainParams, {"lr": value}, "train")


def test_integer_and_bool_settings_are_checked():
    with pytest.raises(ConfigError, match=r"train\.steps: expected an integer"):
        from_dict(TrainParams, {"steps": "10"}, "train")


def test_more_sample_steps_than_timesteps_is_refused_before_any_data_is_read(tmp_path):
    pytest.importorskip("torch")
    from dvdm.stages.train_diffusion import run_train_diffusion

    params = TrainParams(space="rgb", sample_steps=20, diffusion={"num_timesteps": 10})
    with pytest.raises(ConfigError, match=r"sample_steps must be between 1 and .*\(10\), got 20"):
        run_train_diffusion(params, tmp_path / "no-such-data", tmp_path / "out")
