"""Flow `dvdm-stage`: one pipeline stage on a work pool's worker (deployments `dvdm-stage/cpu`, `dvdm-stage/gpu`
in prefect.yaml), sent there by the pipeline flow with `run_deployment` when `placement.mode` is `pools`.

On the worker it
1. clones the project from `git_url` at the orchestrator's commit into a fresh folder (`$DVDM_WORKDIR`, else
   the system temp dir): the working directory is resolved here, on the worker, never at deploy time;
2. writes the orchestrator's dvc.lock entries, points DVC at the shared remote and pulls what the stage
   depends on (the outputs of the stages before it) and, when they exist, its own outputs;
3. skips the stage when DVC finds it up to date; else runs its dvc.yaml command (training stages under
   `torchrun --nproc-per-node $DVDM_NPROC_PER_NODE` when that is > 1), records it with `dvc commit` and
   pushes its outputs to the remote. A training stage's checkpoints go to the parent run as they are written,
   and its retry (`attempt` > 1, on any worker) continues from the last one (flows/checkpoint_sync.py);
4. logs the stage's MLflow child run (metrics, curves, artifacts) under the pipeline's parent run and uploads
   `stage_result.json` to it: the new dvc.lock entry and the stage's git-kept files (metrics), which the
   orchestrator reads back. Nothing passes through a path both machines see.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flows.environment import configure, library_logs_in_run_log

configure()

from prefect import flow, get_run_logger  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from dvdm.errors import ConfigError  # noqa: E402
from dvdm.stages.registry import get_stage  # noqa: E402
from flows import checkpoint_sync, tracking_tasks  # noqa: E402
from flows.dvc_stages import (Stage, commit_stage, lock_entries, producers, pull_outputs,  # noqa: E402
                              push_outputs, read_stages, stage_up_to_date, use_remote, write_lock_entries)
from flows.stage_task import read_stage_metrics  # noqa: E402

RESULT_FILE = "stage_result.json"
NPROC_ENV = "DVDM_NPROC_PER_NODE"   # set by a GPU pool's job template: training processes per machine
WORKDIR_ENV = "DVDM_WORKDIR"        # where a worker clones projects (default: the system temp dir)


def clone_project(git_url: str, revision: str, into: Path) -> Path:
    """A fresh checkout of `git_url` at `revision` (commit) in `into`."""
    run = lambda *args, cwd=None: subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,  # noqa: E731
                                                text=True)
    try:
        run("clone", "--quiet", "--no-checkout", git_url, str(into))
        run("checkout", "--quiet", revision, cwd=into)
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"the worker could not check out {git_url} at {revision}: {exc.stderr.strip()}") from None
    return into


def stage_command(stage_name: str, nproc: int, resume: bool = False) -> list[str]:
    """The stage's `dvdm` command (as dvc.yaml runs it) with this interpreter, under torchrun for a training
    stage when `nproc` > 1, with `--resume` when `resume`. Run in the checkout, whose code comes first on the
    path."""
    stage = get_stage(stage_name)
    args = [*stage.arguments(), *(["--resume"] if resume else [])]
    if nproc > 1 and stage.resumable:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                "-m", "dvdm", *args]
    return [sys.executable, "-m", "dvdm", *args]


def resuming(stage_name: str, force: bool, attempt: int) -> bool:
    """Whether the command continues from a checkpoint, as in local mode (flows/stage_task.py): every attempt
    of a resumable stage does, but the first of a forced run; the checkpoint's fingerprint decides whether it
    is used."""
    return get_stage(stage_name).resumable and (attempt > 1 or not force)


def processes_per_node() -> int:
    value = os.environ.get(NPROC_ENV, "1")
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{NPROC_ENV}={value!r}: give the number of training processes per machine") from None
    if n < 1:
        raise ConfigError(f"{NPROC_ENV} must be >= 1, got {n}")
    return n


def run_command(cmd: list[str], project: Path) -> None:
    """Run a stage command, its output in the flow's log; a failure raises with the output's tail."""
    logger = get_run_logger()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), os.environ.get("PYTHONPATH", "")])}
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line.rstrip())
        tail = (tail + [line])[-40:]
    if proc.wait():
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{''.join(tail)}")


def kept_files(project: Path, stage: Stage) -> dict[str, str]:
    """The stage's git-kept outputs (`cache: false`: metrics files, training curves) as text."""
    return {name: (project / name).read_text() for name in stage.uncached if (project / name).is_file()}


def run_training(project: Path, stage_name: str, parent: dict[str, Any], resume: bool) -> None:
    """Run a resumable stage's command: first put the checkpoint an earlier attempt saved in place (when
    `resume`), and save each checkpoint it writes to the parent run while it runs."""
    logger = get_run_logger()
    client = tracking_tasks.client_for(project)
    checkpoint = project / get_stage(stage_name).path("out") / "checkpoint"
    if resume:
        try:
            step, why = checkpoint_sync.restore(client, parent["run_id"], stage_name, checkpoint)
        except Exception as exc:  # the stage can still run, from the start
            logger.warning("%s: could not download the checkpoint an earlier attempt saved: %s", stage_name, exc)
        else:
            logger.info("%s: %s", stage_name, f"the checkpoint of step {step} an earlier attempt saved is in "
                        f"place ({why})" if step is not None else f"nothing to continue from: {why}")
    with checkpoint_sync.syncing(client, parent["run_id"], stage_name, checkpoint, logger):
        run_command(stage_command(stage_name, processes_per_node(), resume), project)


@flow(name="dvdm-stage", log_prints=True)
def stage_flow(stage_name: str, git_url: str, revision: str, dvc_remote: str, lock: dict[str, Any],
               parent: dict[str, Any], force: bool = False, attempt: int = 1) -> dict[str, Any]:
    """Run pipeline stage `stage_name` of the project at `git_url`@`revision` on this worker (see the module doc);
    `attempt` > 1: a retry, which continues a training stage from the checkpoint an earlier attempt saved."""
    with library_logs_in_run_log():
        return _run_stage_here(stage_name, git_url, revision, dvc_remote, lock, parent, force, attempt)


def _run_stage_here(stage_name: str, git_url: str, revision: str, dvc_remote: str, lock: dict[str, Any],
                    parent: dict[str, Any], force: bool, attempt: int = 1) -> dict[str, Any]:
    """The flow's body (see `stage_flow`)."""
    logger = get_run_logger()
    os.environ["MLFLOW_TRACKING_URI"] = parent["tracking_uri"]  # the pipeline's tracking server
    base = Path(os.environ.get(WORKDIR_ENV) or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"dvdm-{stage_name}-", dir=base))
    try:
        project = clone_project(git_url, revision, workdir / "project")
        write_lock_entries(project, lock)
        use_remote(project, dvc_remote)
        stages = read_stages(project)
        stage = stages[stage_name]
        pull_outputs(project, producers(stages, stage))
        pull_outputs(project, [stage_name], allow_missing=True)  # its outputs, when a run made them before
        started = time.perf_counter()
        skipped = not force and stage_up_to_date(project, stage)
        if skipped:
            logger.info("%s: up to date (dvc status), skipped", stage_name)
        else:
            if get_stage(stage_name).resumable:
                run_training(project, stage_name, parent, resuming(stage_name, force, attempt))
            else:
                run_command(stage_command(stage_name, processes_per_node()), project)
            commit_stage(project, stage)
            push_outputs(project, stage_name)
        result = {"stage": stage_name, "skipped": skipped, "seconds": round(time.perf_counter() - started, 2),
                  "metrics": read_stage_metrics(project, stage), "outs": list(stage.outs),
                  "worker": {"host": socket.gethostname(), "pid": os.getpid(), "worker_pid": os.getppid(),
                             "flow_run_id": str(flow_run.get_id())}}
        child = tracking_tasks.log_stage(str(project), parent, result)
        payload = {**result, "lock": {stage_name: lock_entries(project)[stage_name]},
                   "files": kept_files(project, stage)}
        tracking_tasks.client_for(project).log_text(child, json.dumps(payload), RESULT_FILE)
        return result
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
