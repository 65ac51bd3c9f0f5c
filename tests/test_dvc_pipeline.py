"""`dvc repro` runs the real pipeline in a fresh repository (as after a fresh clone), then is a no-op."""

from __future__ import annotations

import json
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
    check_metrics_and_results(repo, run(dvc + ["metrics", "show", "--json"], repo, env).stdout)
    # `dvc metrics show` prints one table (a row per file, a column per name in any file): it fits 120 columns
    table = run(dvc + ["metrics", "show"], repo, env).stdout
    assert max(len(line) for line in table.splitlines()) <= 120, table
    assert (repo / "reports" / "evaluate" / "grid.mp4").is_file()
    check_plots(repo, env, tmp_path / "plots")
    # a changed decompose parameter reruns only that stage
    params["decompose"]["differences"] = "previous"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(dvc + ["repro"], repo, env).stdout
    assert "Running stage 'decompose'" in out and "Running stage 'ingest'" not in out


def check_metrics_and_results(repo: Path, shown: str) -> None:
    """Every metrics file holds only the shared headline names; each stage's full results are in its results
    file, which DVC does not show."""
    from dvdm.stages.metrics_file import HEADLINE
    from dvdm.stages.registry import STAGES

    (workspace,) = json.loads(shown).values()  # the one revision: the workspace
    metrics = workspace["data"]
    assert len(metrics) == 5
    for path, found in metrics.items():
        assert found["data"] and set(found["data"]) <= set(HEADLINE), (path, found)
    assert metrics["models/diffusion/metrics.json"]["data"]["loss"] > 0
    assert set(metrics["metrics/evaluate.json"]["data"]) >= {"psnr", "ssim", "direction", "speed"}
    for name, stage in STAGES.items():
        assert stage.results is None or (repo / stage.results).is_file(), name
    evaluation = json.loads((repo / STAGES["evaluate"].results).read_text())
    assert "swap_direction_accuracy" in evaluation and "ssim_protocol" in evaluation


def check_plots(repo: Path, env: dict, out: Path) -> None:
    """`dvc plots show` reads every plot dvc.yaml declares (no errors) and writes its HTML."""
    dvc = [sys.executable, "-m", "dvc", "plots", "show"]
    shown = json.loads(run(dvc + ["--json"], repo, env).stdout)
    assert not shown.get("errors"), shown["errors"]
    declared = [next(iter(p)) for p in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]]
    assert all(shown["data"][name] for name in declared), {k: bool(v) for k, v in shown["data"].items()}
    written = run(dvc + ["-o", str(out)], repo, env)
    assert "failed" not in written.stderr and (out / "index.html").is_file()
