"""The CLI as its --help shows it, and the setting options of the training commands (issue 16):
flags render without a value type, `--steps/--lr/--batch/--space/--preset` set the same keys `--set` does,
and their help shows the value the command would use."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from dvdm import cli
from dvdm.config import TrainAEParams, TrainParams, section
from dvdm.errors import ConfigError

WIDE = {"COLUMNS": "250"}  # one line per option: no wrapped help text to match across


def run(*args: str):
    return CliRunner().invoke(cli.app, list(args), env=WIDE)


def help_of(*command: str) -> str:
    r = run(*command, "--help")
    assert r.exit_code == 0, r.output
    return r.output


def option_line(text: str, option: str) -> str:
    return next(line for line in text.splitlines() if re.search(rf"│ +{re.escape(option)}\b", line))


COMMANDS = sorted(typer.main.get_command(cli.app).commands)


@pytest.mark.parametrize("command", [()] + [(c,) for c in COMMANDS], ids=["dvdm"] + COMMANDS)
def test_flags_show_no_value_type(command):
    text = help_of(*command)
    assert "<bool>" not in text
    assert option_line(text, "--help").split("--help", 1)[1].split()[:4] == ["Show", "this", "message", "and"]


def test_a_flag_still_parses_and_refuses_a_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("inspect", "missing.mp4", "--json=yes")
    assert r.exit_code == 2 and "does not take a value" in r.output


def test_training_help_shows_each_setting_option_and_its_effective_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: the built-in defaults (dvdm/config.py)
    train = help_of("train")
    for option, value in (("--space", TrainParams.space), ("--steps", TrainParams.steps), ("--lr", TrainParams.lr),
                          ("--batch", TrainParams.batch_size)):
        assert f"[default: ({value} built in)]" in option_line(train, option), option
    assert "default, tiny" in option_line(train, "--preset")
    assert "<key=value>" in option_line(train, "--set")
    ae = help_of("train-ae")
    assert f"[default: ({TrainAEParams.steps} built in)]" in option_line(ae, "--steps")
    assert "--space" not in ae
    # with a params.yaml: its values, saying so
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"steps": 77, "space": "rgb"}}))
    train = help_of("train")
    assert "[default: (77 from params.yaml)]" in option_line(train, "--steps")
    assert "[default: (rgb from params.yaml)]" in option_line(train, "--space")
    assert f"[default: ({TrainParams.lr} from params.yaml)]" in option_line(train, "--lr")


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Run the training commands with their stage function replaced: the settings they would train with."""
    seen = {}

    def record(params, paths):
        seen["params"] = params
        raise SystemExit(0)  # the settings are all this test needs

    for name in ("TRAIN_AE", "TRAIN_DIFFUSION"):
        monkeypatch.setattr(cli, name, dataclasses.replace(getattr(cli, name), function=record, resumable=False))
    monkeypatch.chdir(tmp_path)
    return seen


def test_setting_options_override_the_params_file_and_set(captured, tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {"steps": 50, "seed": 1}}))
    r = run("train", "--space", "rgb", "--steps", "3", "--lr", "1e-5", "--batch", "2", "--set", "steps=9",
            "--set", "seed=4", "--out", "run")
    assert r.exit_code == 0, r.output
    expected = dataclasses.replace(TrainParams(), space="rgb", steps=3, lr=1e-5, batch_size=2, seed=4)
    assert captured["params"] == expected and isinstance(captured["params"].lr, float)
    r = run("train-ae", "--steps", "5", "--batch", "3", "--lr", "0.01")
    assert r.exit_code == 0, r.output
    assert captured["params"] == dataclasses.replace(TrainAEParams(), steps=5, batch_size=3, lr=0.01)


def test_preset_option_reads_the_named_preset(captured):
    tiny = cli.PRESETS / "tiny.yaml"
    assert run("train", "--preset", "tiny", "--steps", "4", "--out", "run").exit_code == 0
    assert captured["params"] == dataclasses.replace(section(tiny, "train"), steps=4)
    assert run("train-ae", "--preset", "tiny").exit_code == 0
    assert captured["params"] == section(tiny, "train_ae")
    assert not Path("params.yaml").exists()  # a stage command reads the preset; it never rewrites params.yaml


def test_bad_setting_options_are_clear_errors(captured, tmp_path):
    r = run("train", "--preset", "huge")
    assert isinstance(r.exception, ConfigError) and "unknown; choose one of default, tiny" in str(r.exception)
    (tmp_path / "p.yaml").write_text("{}")
    r = run("train-ae", "--preset", "tiny", "--params", "p.yaml")
    assert isinstance(r.exception, ConfigError) and "give one of them" in str(r.exception)
    for bad in (["--steps", "0"], ["--batch", "0"], ["--lr", "fast"]):
        r = run("train", *bad)
        assert r.exit_code == 2 and "Invalid value for" in r.output, r.output
    assert "params" not in captured
