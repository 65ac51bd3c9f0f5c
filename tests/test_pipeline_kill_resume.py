"""kill -9 of a real `dvdm pipeline` in the middle of train-diffusion, then `dvdm pipeline` again: the rerun skips
the finished stages and resumes training from the checkpoint step (not step 0), the killed run's MLflow parent
run is closed as KILLED (no RUNNING orphan), and the killed pipeline's Prefect server did not survive it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_project import tiny_project

STAGES = ["ingest", "decompose", "train-ae", "train-diffusion"]
TRAIN_STEPS = 60
CHECKPOINT_EVERY = 3


def _pipeline(project: Path, env: dict[str, str], **kwargs) -> subprocess.Popen:
    args = [sys.executable, "-m", "dvdm", "pipeline", "--no-register"] + [a for s in STAGES for a in ("--stage", s)]
    return subprocess.Popen(args, cwd=project, env=env, text=True, **kwargs)


def _checkpoint_step(project: Path) -> int:
    config = project / "models" / "diffusion" / "checkpoint" / "config.json"
    try:
        return int(json.loads(config.read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def _servers_of(prefect_home: Path) -> list[int]:
    """Pids of live Prefect servers started with this PREFECT_HOME (Linux /proc)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or b"prefect_server:create_app" not in (proc / "cmdline").read_bytes():
                continue
            if f"PREFECT_HOME={prefect_home}".encode() in (proc / "environ").read_bytes().split(b"\0") \
                    and (proc / "stat").read_text().split(")")[-1].split()[0] != "Z":
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the server processes through /proc")
def test_kill_9_during_training_then_rerun_resumes(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    project = tiny_project(tmp_path / "project", steps=TRAIN_STEPS, checkpoint_every=CHECKPOINT_EVERY,
                           device="cpu")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "DVC_NO_ANALYTICS": "1", "DVDM_WORK_DIR": str(tmp_path / "work")}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)

    killed = _pipeline(project, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while _checkpoint_step(project) < CHECKPOINT_EVERY and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert killed.poll() is None, "the pipeline ended before train-diffusion wrote a checkpoint"
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        killed.kill()
    step = _checkpoint_step(project)
    assert CHECKPOINT_EVERY <= step < TRAIN_STEPS, step

    # the killed pipeline's server goes with it
    deadline = time.monotonic() + 60
    while _servers_of(tmp_path / "prefect") and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = _servers_of(tmp_path / "prefect")
    for pid in survivors:  # never leave one behind, even when the check fails
        os.kill(pid, signal.SIGKILL)
    assert survivors == []

    rerun = _pipeline(project, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err[-4000:]
    assert f"train-diffusion: resuming from step {step}" in err
    for stage in ("ingest", "decompose", "train-ae"):
        assert f"[{stage:15s}] up to date, skipped" in out
    assert "[train-diffusion] ran in" in out
    assert _checkpoint_step(project) == TRAIN_STEPS
    logged = [json.loads(line)["step"] for line in (project / "models" / "diffusion" / "metrics.jsonl")
              .read_text().splitlines() if line.strip()]
    assert logged.count(1) == 1 and logged[-1] == TRAIN_STEPS   # training did not start again from step 0

    from dvdm.tracking.store import open_client

    client = open_client(work=tmp_path / "work")
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, "tags.`dvdm.kind` = 'pipeline'", order_by=["attributes.start_time"])
    assert [r.info.status for r in parents] == ["KILLED", "FINISHED"]
    assert "died without ending the run" in parents[0].data.tags["dvdm.error"]
    assert client.search_runs(experiments, "attributes.status = 'RUNNING'") == []
    assert _servers_of(tmp_path / "prefect") == []
