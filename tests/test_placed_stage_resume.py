"""A placed training stage that fails is retried through Prefect, and the retry, in a fresh clone (another
machine as far as it can tell), continues from the checkpoint the failed attempt saved to the pipeline's MLflow
parent run: the real `dvdm-stage` flow body, the real `dvdm train-ae` command, a DVC remote folder, a SQLite
MLflow store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from test_flows import prefect_env  # noqa: F401  (a module's Prefect test server)
from tiny_project import tiny_project

STEPS, CHECKPOINT_EVERY = 15, 5
STAGE = "train-ae"
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def test_retry_condition_retries_failed_runs_but_not_settings_errors():
    from prefect.states import Failed

    from dvdm.errors import ConfigError
    from flows.placement import StageCancelled, retry_placed_stage

    assert retry_placed_stage(None, None, Failed(data=RuntimeError("deployment run ended Crashed")))
    assert not retry_placed_stage(None, None, Failed(data=ConfigError("no deployment 'dvdm-stage/gpu'")))
    assert not retry_placed_stage(None, None, Failed(data=StageCancelled("cancelled")))


def test_placed_stage_task_takes_its_retries_from_the_settings():
    from dvdm.config import PlacementParams, from_dict
    from dvdm.errors import ConfigError
    from flows.placement import placed_stage_task, retry_placed_stage

    placed = placed_stage_task(PlacementParams(retries=4, retry_delay_seconds=0))
    assert (placed.retries, placed.retry_delay_seconds, placed.retry_condition_fn) == (4, 0, retry_placed_stage)
    assert PlacementParams().retries == 2
    with pytest.raises(ConfigError, match="placement.retries must be >= 0"):
        from_dict(PlacementParams, {"retries": -1}, "placement")
    with pytest.raises(ConfigError, match="placement.retry_delay_seconds"):
        PlacementParams(retry_delay_seconds=-5)


def test_an_upload_cut_short_is_not_restored(tmp_path, mlflow_store):
    from flows import checkpoint_sync
    from dvdm.tracking import runs

    client = mlflow_store("cut-short")
    run_id = runs.start_run(client, "resume", "pipeline-x")
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"step": 7}))
    (folder / "model.safetensors").write_bytes(b"weights of step 7")
    assert checkpoint_sync.upload(client, run_id, STAGE, folder) == 7
    assert checkpoint_sync.restore(client, run_id, STAGE, tmp_path / "a")[0] == 7
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == b"weights of step 7"
    # the next upload died after sending one file: the manifest still describes step 7
    client.log_text(run_id, "weights of step 8", f"{checkpoint_sync.artifact_dir(STAGE)}/checkpoint/model.safetensors")
    step, why = checkpoint_sync.restore(client, run_id, STAGE, tmp_path / "b")
    assert step is None and "incomplete" in why and not (tmp_path / "b").exists()
    assert checkpoint_sync.restore(client, run_id, "train-diffusion", tmp_path / "c")[0] is None


def _saved_step(client, run_id: str) -> int | None:
    """The step of the checkpoint saved for a retry (its manifest), None before one is saved."""
    from flows import checkpoint_sync

    where = checkpoint_sync.artifact_dir(STAGE)
    if checkpoint_sync.MANIFEST not in {Path(a.path).name for a in client.list_artifacts(run_id, where)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, f"{where}/{checkpoint_sync.MANIFEST}", tmp))
                          .read_text())["step"]


@pytest.fixture
def orchestrator(tmp_path, mlflow_store, monkeypatch):
    """The orchestrator's side: a committed tiny project whose ingest and decompose outputs are in the DVC
    remote, and the pipeline's parent run."""
    from dvdm.tracking import runs
    from flows.dvc_stages import commit_stage, push_outputs, read_stages, use_remote
    from flows.stage_task import call_stage

    project = tiny_project(tmp_path / "project")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_ae"].update(steps=STEPS, checkpoint_every=CHECKPOINT_EVERY, device="cpu")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    remote = tmp_path / "dvc-remote"
    use_remote(project, str(remote))
    for name in ("ingest", "decompose"):
        call_stage(project, name)
        commit_stage(project, read_stages(project)[name])
        push_outputs(project, name)
    env = {**os.environ, **GIT_ENV}
    subprocess.run(["git", "add", "-A"], cwd=project, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", "tiny project"], cwd=project, env=env, check=True)
    client = mlflow_store("placed")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)  # the worker sets it: restored afterwards
    monkeypatch.setenv("DVDM_WORKDIR", str(tmp_path / "worker"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the stage commands: a tiny model on a shared machine
    parent = {"run_id": runs.start_run(client, "placed", "pipeline-placed", name="pipeline"),
              "tracking_uri": client.tracking_uri}
    return project, remote, client, parent


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_env")
def test_a_retried_placed_training_stage_resumes_from_the_failed_attempts_checkpoint(orchestrator, monkeypatch,
                                                                                    caplog):
    import flows.checkpoint_sync as checkpoint_sync
    import flows.stage_flow as stage_flow
    from flows.dvc_stages import lock_entries
    from flows.placement import read_result

    project, remote, client, parent = orchestrator
    monkeypatch.setattr(checkpoint_sync, "POLL_SECONDS", 0.2)
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True,
                              check=True).stdout.strip()
    commands: list[list[str]] = []
    real = stage_flow.run_command

    def lost_after_first_save(cmd, clone):
        """The real command, held once it wrote a checkpoint until the sync saved it, then killed: a worker
        that dies mid-training."""
        commands.append(cmd)
        proc = subprocess.Popen(cmd, cwd=clone, env={**os.environ, "PYTHONPATH": str(clone)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not (clone / "models/autoencoder/checkpoint/config.json").is_file():
                assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
                time.sleep(0.02)
            proc.send_signal(signal.SIGSTOP)
            while _saved_step(client, parent["run_id"]) is None:
                assert time.monotonic() < deadline, "the sync saved no checkpoint"
                time.sleep(0.1)
        finally:
            proc.kill()
            proc.wait()
        raise RuntimeError("injected: the worker lost its stage command")

    args = dict(stage_name=STAGE, git_url=str(project), revision=revision, dvc_remote=str(remote),
                lock=lock_entries(project), parent=parent, force=True)
    monkeypatch.setattr(stage_flow, "run_command", lost_after_first_save)
    with pytest.raises(RuntimeError, match="injected"):
        stage_flow.stage_flow(**args, attempt=1)
    assert "--resume" not in commands[0]  # a forced run's first attempt starts over
    saved = _saved_step(client, parent["run_id"])
    assert saved is not None and CHECKPOINT_EVERY <= saved < STEPS

    monkeypatch.setattr(stage_flow, "run_command", lambda cmd, clone: (commands.append(cmd), real(cmd, clone)))
    monkeypatch.setattr(checkpoint_sync, "POLL_SECONDS", 2.0)  # fewer uploads beside the training
    caplog.clear()
    result = stage_flow.stage_flow(**args, attempt=2)
    out = caplog.text  # the flow's log: the command's output included
    assert "--resume" in commands[1] and not result["skipped"]
    assert f"{STAGE}: resuming from step {saved}" in out, out[-3000:]

    # what the orchestrator reads back: the new lock entry and the whole curve, each step once (the failed
    # attempt's log up to its checkpoint travelled with it)
    payload = read_result(str(project), parent, STAGE)
    logged = [json.loads(line)["step"] for line in payload["files"]["models/autoencoder/metrics.jsonl"].splitlines()
              if line.strip() and "step" in json.loads(line)]
    assert logged == list(range(1, STEPS + 1)), logged
    assert STAGE in payload["lock"] and not list((project.parent / "worker").glob("dvdm-*"))
