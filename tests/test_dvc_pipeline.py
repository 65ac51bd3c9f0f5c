"""`dvc repro` runs the real pipeline in a fresh repository (as after a fresh clone), then is a no-op."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny_project import tiny_project


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return r


@pytest.mark.slow
def test_dvc_repro_in_fresh_repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    # text=True: the repository's preset conditions on captions, so dvc repro runs the text encoder too
    repo = tiny_project(tmp_path / "repo", text=True)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc = [sys.executable, "-m", "dvc"]
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
