"""Every `--model` option (sample, evaluate, export, serve) takes a training run folder, an export folder or a
registered version (`models:/name@alias`, `models:/name/N`), and says in one line what is wrong otherwise
(issue 16). `dvdm sample` runs an export (what a registered version normally holds) on ONNX Runtime."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")

from PIL import Image  # noqa: E402
from test_python_api import champion, tiny_export  # noqa: E402,F401  (module fixtures)
from test_stages_cli import _assert_clean_error  # noqa: E402


def dvdm(*args: str, cwd: Path, tracking: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVDM_WORK_DIR")}
    if tracking:
        env["MLFLOW_TRACKING_URI"] = tracking
    return subprocess.run([sys.executable, "-m", "dvdm", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture
def image(tmp_path) -> Path:
    Image.new("RGB", (24, 20), (200, 30, 30)).save(tmp_path / "f.png")
    return tmp_path / "f.png"


def test_sample_runs_an_export_folder_and_a_registered_version(tiny_export, champion, image, tmp_path):
    from dvdm.video.reader import read_video

    r = dvdm("sample", "--model", str(tiny_export), "--image", "f.png", "--steps", "2", "--out", "a.gif",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"from {tiny_export}" in r.stdout and "resized from 24x20 to the model's 16x16" in r.stderr
    assert read_video(tmp_path / "a.gif").frames.shape == (4, 16, 16, 3)
    r = dvdm("sample", "--model", "models:/dvdm@champion", "--image", "f.png", "--steps", "2", "--sampler", "dpm++",
             "--out", "b.mp4", cwd=tmp_path, tracking=champion)
    assert r.returncode == 0, r.stderr
    assert "from models:/dvdm@champion (version 1)" in r.stdout and (tmp_path / "b.mp4").stat().st_size > 0


def test_sample_names_what_an_export_cannot_do(tiny_export, image, tmp_path):
    base = ["sample", "--model", str(tiny_export), "--image", "f.png", "--out", "c.mp4"]
    _assert_clean_error(dvdm(*base, "--sampler", "ddpm", cwd=tmp_path),
                        "an ONNX export, which samples with ddim or dpm++")
    _assert_clean_error(dvdm(*base, "--precision", "bf16", cwd=tmp_path), "runs in fp32")
    _assert_clean_error(dvdm(*base, "--steps", "11", cwd=tmp_path), "--steps must be within 1..10")
    _assert_clean_error(dvdm(*base, "--device", "tpu", cwd=tmp_path), "provider preference must be one of")
    assert not (tmp_path / "c.mp4").exists()


def test_stage_commands_need_a_checkpoint_and_say_so(tiny_export, champion, tmp_path):
    _assert_clean_error(dvdm("export", "--model", str(tiny_export), "--out", "e", cwd=tmp_path),
                        "an ONNX export; dvdm export needs the training run it was exported from")
    _assert_clean_error(dvdm("evaluate", "--model", "models:/dvdm@champion", cwd=tmp_path, tracking=champion),
                        "models:/dvdm@champion (version 1): an ONNX export; dvdm evaluate needs")
    _assert_clean_error(dvdm("evaluate", "--model", "models:/dvdm@gone", cwd=tmp_path, tracking=champion),
                        "no alias 'gone'")
    _assert_clean_error(dvdm("export", "--model", "nowhere", cwd=tmp_path), "nowhere: no such model folder")
    assert not (tmp_path / "e").exists()


def test_serve_checks_its_model_before_serving(tiny_model, tmp_path):
    _assert_clean_error(dvdm("serve", "--model", str(tiny_model), cwd=tmp_path),
                        "a training checkpoint; dvdm serve runs ONNX exports", "dvdm export --model")
    _assert_clean_error(dvdm("serve", "--model", "models:/dvdm@", cwd=tmp_path), "look like models:/dvdm@champion")
    _assert_clean_error(dvdm("serve", "--model", "s3://bucket/x", cwd=tmp_path), "only models:/ registry references")
    # no store in this folder: an error, not a new empty database to wait on
    _assert_clean_error(dvdm("serve", cwd=tmp_path), "no MLflow store at", "MLFLOW_TRACKING_URI")
    assert not (tmp_path / "work").exists()
