"""Scale out as a team runs it, for real: a Prefect server and an MLflow tracking server on PostgreSQL, the
deployments of prefect.yaml (`prefect deploy --all`), one process worker per pool (dvdm-cpu, dvdm-gpu), and
`dvdm pipeline --placement pools` in a git checkout of the tiny project. The training stages must run on the
GPU pool's worker and the others on the CPU pool's worker (each stage's MLflow child run records the worker
process that ran it), data must move only through the DVC remote (the workers clone the project into their own
folders and remove them; the orchestrator's checkout only pulls what registration reads), and the run must
end with `champion` set in the PostgreSQL-backed registry."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_project import REPO, tiny_project

pytestmark = pytest.mark.slow
TRAINING = {"train-ae", "train-diffusion"}


def _env(prefect_api: str, tracking_uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return {**env, "PREFECT_API_URL": prefect_api, "MLFLOW_TRACKING_URI": tracking_uri,
            "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
            "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "OMP_NUM_THREADS": "1",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t", **extra}


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def test_stages_run_on_their_pools_through_the_dvc_remote_and_mlflow(tmp_path, postgres, mlflow_server,
                                                                        prefect_server):
    origin, remote = tmp_path / "origin.git", tmp_path / "dvc-remote"
    project = tiny_project(tmp_path / "project")
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["placement"].update(mode="pools", dvc_remote=str(remote), git_url=str(origin))
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = _env(prefect_server, mlflow_server)
    _run(["git", "init", "-q", "--bare", str(origin)], tmp_path, env)
    _run(["git", "add", "-A"], project, env)
    _run(["git", "commit", "-q", "-m", "tiny project"], project, env)
    _run(["git", "remote", "add", "origin", str(origin)], project, env)
    _run(["git", "push", "-q", "origin", "HEAD"], project, env)

    for pool in ("dvdm-cpu", "dvdm-gpu"):
        _run(_prefect("work-pool", "create", pool, "--type", "process"), project, env)
    _run(_prefect("--no-prompt", "deploy", "--all"), project, env)

    workers, logs = {}, {}
    try:
        for pool in ("dvdm-cpu", "dvdm-gpu"):
            logs[pool] = open(tmp_path / f"{pool}.log", "w")
            work = tmp_path / f"{pool}-work"
            work.mkdir()
            # a worker's own folder (not the project's): it checks out what each stage run needs there
            workers[pool] = subprocess.Popen(_prefect("worker", "start", "--pool", pool, "--type", "process"),
                                             cwd=work, env=_env(prefect_server, mlflow_server, DVDM_WORKDIR=str(work)),
                                             stdout=logs[pool], stderr=subprocess.STDOUT, start_new_session=True)
        proc = subprocess.run([sys.executable, "-m", "dvdm", "pipeline", "--placement", "pools"], cwd=project,
                              env=env, capture_output=True, text=True, timeout=1500)
        worker_logs = "".join((tmp_path / f"{p}.log").read_text()[-3000:] for p in workers)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:] + worker_logs
    finally:
        for p in workers.values():
            with _suppress():
                os.killpg(p.pid, signal.SIGTERM)
        for p in workers.values():  # a busy worker may take long to shut down gracefully: then kill it
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with _suppress():
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=30)
        for f in logs.values():
            f.close()
    assert "registered dvdm version 1" in proc.stdout and "champion" in proc.stdout

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    champion = client.get_model_version_by_alias("dvdm", "champion")
    parent = client.get_run(champion.run_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_stage = {r.data.tags["dvdm.stage"]: r for r in children}
    assert set(by_stage) == set(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])
    for stage, run in by_stage.items():
        pool = "dvdm-gpu" if stage in TRAINING else "dvdm-cpu"
        assert run.data.tags["dvdm.worker.worker_pid"] == str(workers[pool].pid), (stage, run.data.tags)
        assert run.data.tags["dvdm.skipped"] == "false"
    # the Prefect server agrees: each stage's deployment run was on the pool its settings name
    import httpx

    flow_runs = httpx.post(f"{prefect_server}/flow_runs/filter", json={"limit": 200}, timeout=30).json()
    placed = [r for r in flow_runs if "stage_name" in r["parameters"]]
    assert [r["state_type"] for r in placed] == ["COMPLETED"] * len(by_stage), [(r["name"], r["state_type"]) for r in flow_runs]
    pools = {r["parameters"]["stage_name"]: r["work_pool_name"] for r in placed}
    assert pools == {s: "dvdm-gpu" if s in TRAINING else "dvdm-cpu" for s in by_stage}

    # data moved through the DVC remote: the workers' clones are gone, the remote holds the outputs, and the
    # orchestrator's checkout has the new dvc.lock but only the outputs registration pulled
    for pool in workers:
        assert not list((tmp_path / f"{pool}-work").glob("dvdm-*")), pool
    assert any(remote.rglob("*")) and (project / "models" / "export").is_dir()
    assert not (project / "data" / "ingested").exists() and not (project / "models/diffusion/checkpoint").exists()
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(by_stage)
    assert (project / "metrics" / "evaluate.json").is_file()  # a git-kept output, back through MLflow


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is ProcessLookupError
