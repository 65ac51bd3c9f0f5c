"""What a pipeline run leaves in Prefect's database (the run log the Prefect UI shows) and on the terminal: INFO
records, the pipeline's `[k/n] stage` lines and the stages' progress lines go to the API; the terminal of a
CLI-launched run gets dvdm's own lines and bars, not Prefect's INFO records."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_project import tiny_project


@pytest.fixture(scope="module")
def prefect_api():
    """A Prefect test server (its own temporary database) for this module: its API URL."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield PREFECT_API_URL.value()


def run_log(flow_run_id) -> list[tuple[int, str, str]]:
    """(level, logger, message) of every record the API stored for a flow run and its task runs."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.prefect_server import flush_run_logs

    flush_run_logs()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [(log.level, log.name, log.message) for log in logs]


def test_a_flow_runs_info_records_and_stage_lines_reach_the_prefect_api(prefect_api, tmp_path):
    from flows.pipeline import pipeline

    project = tiny_project(tmp_path / "project")
    state = pipeline(project=str(project), stages=["ingest"], register_model=False, return_state=True)
    assert state.is_completed()
    info = [(name, message) for level, name, message in run_log(state.state_details.flow_run_id)
            if level == logging.INFO]
    messages = [message for _, message in info]
    assert any(m.startswith("[1/1] ingest: started (pipeline at ") for m in messages), messages
    assert any(m.startswith("[1/1] ingest: done in ") for m in messages), messages
    assert ("prefect.task_runs", "ingest: done in") in [(n, m[:len("ingest: done in")]) for n, m in info]


@pytest.mark.slow
def test_cli_pipeline_progress_on_the_terminal_and_in_the_run_log(prefect_api, tmp_path):
    """The main job as the README runs it, its output a pipe (so progress comes as lines, here every update)."""
    project = tiny_project(tmp_path / "project", steps=5)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "DVDM_PROGRESS_SECONDS": "0.001"}
    r = subprocess.run([sys.executable, "-m", "dvdm", "pipeline", "--project", str(project), "--no-register"],
                       capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr.splitlines()
    for k, stage in enumerate(["ingest", "decompose", "train-ae", "train-diffusion", "evaluate", "export"], 1):
        assert any(line.startswith(f"[{k}/6] {stage}: started (pipeline at ") for line in err), r.stderr
        assert any(line.startswith(f"[{k}/6] {stage}: done in ") for line in err), r.stderr
    periodic = [line for line in err if re.match(r"train diffusion: step \d/5 ", line)]
    assert periodic and all("steps/s" in line and "ETA" in line and "loss" in line for line in periodic), r.stderr
    for done in ("train autoencoder: done, step 2/2", "train diffusion: done, step 5/5",
                 "evaluate: held-out samples: done, clip 2/2", "evaluate: prompt swap, drawn first frames: done",
                 "export: done, part "):
        assert any(line.startswith(done) for line in err), (done, r.stderr)
    # Prefect's own INFO records stay off the terminal
    for chatter in ("Beginning flow run", "Finished in state", "INFO"):
        assert chatter not in r.stderr, (chatter, r.stderr)
    assert "pipeline finished in" in r.stdout

    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
    logged = run_log(run.id)
    assert all(level == logging.INFO for level, name, _ in logged if name == "dvdm.progress")
    # the library's other INFO records too (here: the ONNX Runtime sessions of the export's parity check)
    assert any(name.startswith("dvdm.runtime") and level == logging.INFO for level, name, _ in logged), logged
    messages = [message for _, _, message in logged]
    assert "Beginning flow run" in " ".join(messages)               # Prefect's INFO records are in the run log
    for line in ("[4/6] train-diffusion: done in ", "train diffusion: done, step 5/5", "export: done, part "):
        assert any(m.startswith(line) for m in messages), (line, messages)
    assert [m for m in messages if re.match(r"train diffusion: step \d/5 ", m)] == periodic  # as on the terminal
