"""The evaluate stage and `dvdm evaluate` / `dvdm fvd` on a tiny trained model (CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dvdm.config import EvaluateParams
from dvdm.evaluate.i3d_weights import weights_available
from dvdm.stages.evaluate import run_evaluate, side_by_side
from dvdm.video.reader import read_video
from dvdm.video.writer import write_mp4


def dvdm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvdm", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_side_by_side_layout():
    a = np.zeros((3, 8, 10, 3), np.uint8)
    b = np.full((3, 8, 10, 3), 9, np.uint8)
    grid = side_by_side([a, a], [b, b], gap=2)
    assert grid.shape == (3, 8 * 2 + 2, 10 * 2 + 2, 3)
    assert (grid[:, :8, :10] == 0).all() and (grid[:, :8, 12:] == 9).all() and (grid[:, :, 10:12] == 255).all()


def test_evaluate_stage_writes_report_metrics_and_videos(tiny_model, tmp_path):
    data = tiny_model.parent / "ingested"
    params = EvaluateParams(max_clips=2, samples_per_clip=2, steps=2, batch_size=3, grid_clips=2,
                            prompt_swap_clips=0, prompt_swap_drawn=0)  # the prompt swap has its own tests
    m = run_evaluate(params, tiny_model, data, tmp_path / "eval", tmp_path / "metrics.json")
    out = tmp_path / "eval"
    for name in ("results.json", "report.md", "grid.gif", "grid.mp4", "psnr_per_frame.png", "ssim_per_frame.png",
                 "per_frame.json"):
        assert (out / name).is_file(), name
    names = sorted(p.name for p in (out / "samples").glob("*.mp4"))
    assert len(names) == 4 and names[0].endswith("-seed0.mp4"), names   # 2 clips x 2 seeds, distinct files
    # the DVC metrics file: the headline, under the names every stage shares (dvdm.stages.metrics_file)
    from dvdm.stages.metrics_file import headline

    assert json.loads((tmp_path / "metrics.json").read_text()) == headline(
        {"clips": 4, "psnr": m["psnr"], "ssim": m["ssim"], "fvd": m.get("fvd")})
    assert m["n_clips"] == 4 and m["n_real_clips"] == 2 and m["split"] == "test" and m["space"] == "rgb"
    assert 0 < m["psnr"] < 100 and -1 <= m["ssim"] <= 1 and m["sample_seconds_per_clip"] > 0
    # synthetic labels -> motion-following is scored; an untrained model is near chance, not perfect
    assert 0 <= m["direction_accuracy"] <= 1 and "motion_chance" in m
    grid = read_video(out / "grid.mp4").frames
    assert grid.shape[0] == 16 and grid.shape[2] == 64 * 2 + 2
    if weights_available() is None:
        assert m["fvd"] >= 0 and m["fvd_protocol"]["n_fake"] == 4 and m["fvd_protocol"]["n_real"] == 2
        assert "fvd" in (out / "report.md").read_text().lower()
    else:
        assert "fvd_skipped" in m


def test_cli_evaluate_and_fvd(tiny_model, tmp_path):
    data = tiny_model.parent / "ingested"
    r = dvdm("evaluate", "--model", str(tiny_model), "--in", str(data), "--out", "ev", "--set", "max_clips=2",
             "--set", "steps=2", "--set", "fvd=false", "--set", "prompt_swap_clips=0", "--set", "prompt_swap_drawn=0",
             cwd=tmp_path)  # the prompt swap (on by default, as in the main job) has its own tests
    assert r.returncode == 0, r.stderr
    assert "evaluated 2 test clips" in r.stdout and "FVD skipped: disabled" in r.stderr

    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        write_mp4(real / f"{i}.mp4", rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    r = dvdm("fvd", str(real), str(fake), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "fake" in r.stderr, r.stderr
    write_mp4(fake / "short.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    r = dvdm("fvd", str(real), str(fake), cwd=tmp_path)
    assert r.returncode == 2 and "short.mp4" in r.stderr and "Traceback" not in r.stderr, r.stderr
    if weights_available() is not None:
        pytest.skip(f"I3D weights absent: {weights_available()}")
    (fake / "short.mp4").unlink()
    for i in range(3):
        write_mp4(fake / f"{i}.mp4", rng.integers(0, 256, (16, 48, 48, 3), dtype=np.uint8))
    r = dvdm("fvd", str(real), str(fake), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert {"fvd", "kvd", "n_real", "n_fake", "frames"} <= set(obj) and obj["n_real"] == 3 and obj["frames"] == 16
    assert "resized" in r.stderr
