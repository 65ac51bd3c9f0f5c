"""The orchestrator's side of stage placement (`placement.mode: pools`): each stage becomes a run of its
`dvdm-stage` deployment (`run_deployment`, a subflow of the pipeline run), so Prefect sends it to that
deployment's work pool; training goes to a GPU pool, the rest to a CPU pool (params.yaml `placement`).

What travels: the git URL and commit of the project, the DVC remote's URL, dvc.lock entries (hashes) and run
ids. Data moves through the DVC remote; each stage's result (its new dvc.lock entry and git-kept metrics files)
comes back through its MLflow child run (`stage_result.json`), and is written into this project, so that at
the end `dvc pull` here fetches what the workers made.

A deployment run that fails or crashes is sent again (`placement.retries`, `retry_delay_seconds`); a training
stage's retry continues from the checkpoint the failed attempt saved to the parent run (flows/checkpoint_sync.py).
A settings problem (ConfigError) and a run someone cancelled are not retried.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.deployments import run_deployment
from prefect.runtime import task_run
from prefect.settings import PREFECT_API_URL
from prefect.states import State

from dvdm.config import PlacementParams
from dvdm.errors import ConfigError
from dvdm.tracking import runs
from flows import tracking_tasks
from flows.dvc_stages import lock_entries, pull_outputs, read_stages, write_lock_entries
from flows.stage_flow import RESULT_FILE
from dvdm.utils.atomic import write_text


def _git(project: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=project, capture_output=True, text=True)
    if proc.returncode:
        raise ConfigError(f"placement pools: `git {' '.join(args)}` failed in {project}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def project_source(project: Path, placement: PlacementParams) -> tuple[str, str]:
    """(git URL, commit) the workers check out: the committed project, so a stage runs the code and settings
    this run was started with. Uncommitted changes to anything but what the pipeline writes are refused."""
    written = {"dvc.lock"} | {p for s in read_stages(project).values() for p in s.uncached}
    changed = [line[3:] for line in _git(project, "status", "--porcelain", "--untracked-files=no").splitlines()
               if line[3:] not in written]
    if changed:
        raise ConfigError("placement pools: workers run the committed project, but these files have uncommitted "
                          f"changes: {', '.join(changed)}; commit them (and push where the workers clone from)")
    url = placement.git_url or _git(project, "remote", "get-url", "origin")
    return url, _git(project, "rev-parse", "HEAD")


def check_shared(placement: PlacementParams, tracking_uri: str) -> None:
    """Workers on other machines can reach neither an embedded SQLite store nor an unset remote."""
    if not placement.dvc_remote:
        raise ConfigError("placement pools needs placement.dvc_remote: a DVC remote every worker can reach "
                          "(s3://bucket/path, ssh://host/path, a shared folder)")
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        raise ConfigError(f"placement pools needs a tracking server every worker can reach; MLflow's store is "
                          f"{tracking_uri}: set MLFLOW_TRACKING_URI (http://host:5000, postgresql://...)")


def read_result(project: str, parent: dict[str, Any], stage_name: str) -> dict[str, Any]:
    """The `stage_result.json` a worker uploaded to the stage's child run."""
    client = tracking_tasks.client_for(project)
    experiment = client.get_run(parent["run_id"]).info.experiment_id
    child = runs.find_run(client, experiment, stage_name, parent["run_id"], include_finished=True)
    if child is None:
        raise RuntimeError(f"{stage_name}: the worker logged no MLflow child run under {parent['run_id']}")
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(child.info.run_id, RESULT_FILE, tmp)
        return json.loads(Path(path).read_text())


class StageCancelled(RuntimeError):
    """A stage's deployment run was cancelled (by someone, on purpose): not retried."""


def retry_placed_stage(_task: Task, _run: TaskRun, state: State) -> bool:
    """The retry condition of `run_placed_stage`: a deployment run that failed or crashed (or a failure to
    read its result) is sent again; a ConfigError (no such deployment, bad settings) or a cancelled run is not."""
    try:
        state.result()
    except (ConfigError, StageCancelled):
        return False
    except Exception:
        return True
    return True


def placed_stage_task(settings: PlacementParams) -> Task:
    """`run_placed_stage` with the retries `settings` ask for."""
    return run_placed_stage.with_options(retries=settings.retries, retry_delay_seconds=settings.retry_delay_seconds,
                                         retry_condition_fn=retry_placed_stage)


@task(name="placed-stage", cache_policy=NO_CACHE, task_run_name="{stage_name} on pool")
def run_placed_stage(project: str, stage_name: str, placement: dict[str, Any], source: tuple[str, str],
                     parent: dict[str, Any], force: bool = False) -> dict[str, Any]:
    """Run one stage as a `dvdm-stage` deployment run and take its result into this project (retries:
    `placed_stage_task`)."""
    logger = get_run_logger()
    root = Path(project)
    settings = PlacementParams(**placement)
    deployment = settings.deployment(stage_name)
    attempt = task_run.get_run_count()
    logger.info("%s: sending to deployment %s%s", stage_name, deployment,
                f" (attempt {attempt})" if attempt > 1 else "")
    from prefect.exceptions import ObjectNotFound

    try:
        run = run_deployment(deployment, parameters={
            "stage_name": stage_name, "git_url": source[0], "revision": source[1],
            "dvc_remote": settings.dvc_remote, "lock": lock_entries(root), "parent": parent, "force": force,
            "attempt": attempt},
            timeout=None)
    except ObjectNotFound:
        raise ConfigError(f"{stage_name}: no deployment {deployment!r} on the Prefect server "
                          f"({PREFECT_API_URL.value() or 'a temporary local one'}); deploy them with "
                          "`prefect deploy --all` and start a worker per pool (README: Scale out)") from None
    if run.state and run.state.is_cancelled():
        raise StageCancelled(f"{stage_name}: deployment run {run.name} ({run.id}) was cancelled")
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"{stage_name}: deployment run {run.name} ({run.id}) on pool {run.work_pool_name} "
                           f"ended {run.state.name if run.state else 'without a state'}")
    payload = read_result(project, parent, stage_name)
    write_lock_entries(root, payload.pop("lock"))
    for name, text in payload.pop("files").items():
        write_text(root / name, text)
    payload["work_pool"], payload["deployment_run"] = run.work_pool_name, str(run.id)
    logger.info("%s: %s on pool %s (worker pid %s)", stage_name, "skipped" if payload["skipped"] else "ran",
                run.work_pool_name, payload["worker"]["worker_pid"])
    return payload


def fetch_for_registration(project: str) -> None:
    """What register/promote reads here (the export, the evaluation report): pulled from the DVC remote."""
    root = Path(project)
    wanted = [n for n in ("evaluate", "export") if n in read_stages(root) and n in lock_entries(root)]
    pull_outputs(root, wanted)
