"""`dvc repro` runs the real pipeline in a fresh repository (as after a fresh clone), then is a no-op."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.mark.slow
def test_dvc_repro_in_fresh_repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    for folder in ("dvdm", "serving"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["options"].update(num_train=4, num_val=2, num_test=2)
    params["train_ae"].update(steps=3, batch_size=4, base_channels=8, eval_clips=1, log_every=1)
    params["train"].update(steps=2, batch_size=2, sample_steps=2, log_every=1,
                           unet={"base_channels": 8, "channel_mults": [1, 2], "spatial_attention": [False, False],
                                 "attention_heads": 1, "attention_head_dim": 8})
    params["evaluate"].update(max_clips=2, steps=2, batch_size=2, grid_clips=2, fvd=False, prompt_swap_clips=1,
                              prompt_swap_drawn=1)
    params["export"].update(parity_steps=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc = [sys.executable, "-m", "dvc"]
    run(["git", "init", "-q"], repo, env)
    run(dvc + ["init", "-q"], repo, env)
    out = run(dvc + ["repro"], repo, env).stdout
    for stage in ("ingest", "decompose", "train-ae", "train-diffusion", "evaluate", "export"):
        assert f"Running stage '{stage}'" in out, out
    assert (repo / "data" / "decomposed" / "stats.json").is_file()
    assert (repo / "models" / "diffusion" / "checkpoint" / "model.safetensors").is_file()
    assert (repo / "dvc.lock").is_file()
    again = run(dvc + ["repro"], repo, env).stdout
    assert "Running stage" not in again
    metrics = run(dvc + ["metrics", "show", "--json"], repo, env).stdout
    assert "roundtrip_max_abs_error" in metrics and "residual_psnr" in metrics and "val_loss" in metrics
    assert '"motion_accuracy"' in metrics and (repo / "reports" / "evaluate" / "grid.mp4").is_file()
    # a changed decompose parameter reruns only that stage
    params["decompose"]["differences"] = "previous"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(dvc + ["repro"], repo, env).stdout
    assert "Running stage 'decompose'" in out and "Running stage 'ingest'" not in out
    plots = run(dvc + ["plots", "show", "--json"], repo, env).stdout
    assert "metrics.jsonl" in plots
