"""What a stage gives DVC: a metrics file of shared headline names, and a loss curve `dvc plots` can read."""

from __future__ import annotations

import json
import math

import pytest

from dvdm.stages.curves import CURVE_FILE, LOG_FILE, read_log, write_curve
from dvdm.stages.metrics_file import HEADLINE, headline, write_metrics


def test_metrics_file_holds_shared_names_rounded_and_only_numbers(tmp_path):
    written = write_metrics(tmp_path / "m" / "metrics.json",
                            {"psnr": 23.743856, "ssim": 0.82786997, "clips": 1056, "fvd": 1234.56,
                             "loss": math.nan, "speed": None, "direction": 0.9375})
    assert written == {"psnr": 23.74, "ssim": 0.8279, "clips": 1056, "fvd": 1235.0, "direction": 0.9375}
    assert json.loads((tmp_path / "m" / "metrics.json").read_text()) == written
    assert headline(written) == written  # rounding twice changes nothing


def test_a_stage_cannot_add_its_own_metric_names():
    # one new name per stage is how `dvc metrics show` grew to ~150 columns
    with pytest.raises(ValueError, match="swap_direction_accuracy"):
        headline({"swap_direction_accuracy": 0.9})
    with pytest.raises(ValueError, match="not among"):
        headline({"psnr": 20.0, "fvd_protocol": "I3D"})
    with pytest.raises(ValueError, match="seconds"):  # a timing would change the file (in git) at every rerun
        headline({"seconds": 12.5})
    assert set(HEADLINE) >= {"psnr", "ssim", "fvd", "direction", "loss"}


def test_curve_keeps_the_records_with_a_loss(tmp_path):
    lines = [{"step": 25, "loss": 0.9, "lr": 1e-3, "steps_per_second": 4.8},
             {"step": 50, "loss": 0.8, "lr": 1e-3, "steps_per_second": 5.1, "cpu_threads": 2.0},
             {"step": 50, "check_direction_accuracy": 0.5}]  # a prompt-swap check: DVC fails on it in a loss plot
    (tmp_path / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in lines) + "\n")
    assert read_log(tmp_path / LOG_FILE) == lines
    curve = [{"step": 25, "loss": 0.9, "lr": 1e-3}, {"step": 50, "loss": 0.8, "lr": 1e-3}]  # no machine speed
    assert write_curve(tmp_path) == curve and json.loads((tmp_path / CURVE_FILE).read_text()) == curve
    assert read_log(tmp_path / "missing.jsonl") == []


def test_dvc_metrics_show_fits_120_columns_with_every_headline_name_in_every_file(capsys):
    """The worst case of the layout: every metrics file of dvc.yaml holding every shared name at its widest."""
    from pathlib import Path

    import yaml
    from dvc.compare import show_metrics

    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    paths = [next(iter(m)) for s in stages.values() for m in s.get("metrics", [])]
    widest = headline({"clips": 123456, "loss": 0.000123456, "psnr": 99.99, "ssim": 0.99991,
                       "fvd": 1234.56, "direction": 0.93751, "speed": 0.79167})
    show_metrics({"workspace": {"data": {p: {"data": widest} for p in paths}}}, precision=5, round_digits=True)
    table = capsys.readouterr().out.splitlines()
    assert len(table) == len(paths) + 1 and set(table[0].split()) == {"Path", *HEADLINE}
    assert max(map(len, table)) <= 120, "\n".join(table)
