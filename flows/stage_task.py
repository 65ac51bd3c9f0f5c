"""One Prefect task that runs any `dvc.yaml` stage: skip when DVC finds it up to date, else run its stage
function (looked up in `dvdm.stages.registry`, the one the stage's `dvdm` command calls) in-process, record it
with `dvc commit`, and log it as an MLflow child run.

The task takes and returns plain values (project path, stage name, run ids, metrics), never tensors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from dvdm.stages.registry import PARAMS_FILE, get_stage
from flows.dvc_stages import Stage, commit_stage, read_stages, stage_up_to_date
from flows.environment import working_directory


def read_stage_metrics(project: Path, stage: Stage) -> dict[str, float]:
    """The numeric values of a stage's declared metrics files, flattened with dots."""
    out: dict[str, float] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            out[prefix] = float(obj)

    for name in stage.metrics:
        path = Path(project) / name
        if path.is_file():
            walk("", json.loads(path.read_text()))
    return out


def call_stage(project: Path, stage_name: str, resume: bool = False) -> None:
    """Run a stage's function as `dvc repro` runs its command: from the project root, with the project's params
    file and the paths dvc.yaml declares. A failure raises (so Prefect sees it and retries).

    `resume` continues from the stage's checkpoint when it was written with the same params section and the
    same content of every dvc.yaml dependency (data and code alike, as DVC sees them)."""
    stage = get_stage(stage_name)
    deps = read_stages(project)[stage_name].deps
    with working_directory(project):
        stage.run(stage.load_params(PARAMS_FILE), {key: stage.path(key) for key in stage.paths}, resume=resume,
                  inputs=deps if stage.resumable else None)


@task(name="stage", retries=2, retry_delay_seconds=3, cache_policy=NO_CACHE, task_run_name="{stage_name}")
def run_stage(project: str, stage_name: str, force: bool = False) -> dict[str, Any]:
    """Run one stage unless DVC says it is up to date; returns what ran and the stage's metrics."""
    logger = get_run_logger()
    root = Path(project)
    stage = read_stages(root)[stage_name]
    if not force and stage_up_to_date(root, stage):
        logger.info("%s: up to date (dvc status), skipped", stage_name)
        return {"stage": stage_name, "skipped": True, "seconds": 0.0, "metrics": read_stage_metrics(root, stage),
                "outs": list(stage.outs)}
    # a retry, and a rerun after a crash (kill -9 included), continue an interrupted training from its last
    # checkpoint when settings and inputs are unchanged; --force starts over (its retries still resume)
    retry = task_run.get_run_count() > 1
    resume = get_stage(stage_name).resumable and (retry or not force)
    if resume and retry:
        logger.info("%s: retry %d resumes from the last checkpoint", stage_name, task_run.get_run_count() - 1)
    started = time.perf_counter()
    call_stage(root, stage_name, resume=resume)
    commit_stage(root, stage)
    seconds = time.perf_counter() - started
    logger.info("%s: done in %.1fs", stage_name, seconds)
    return {"stage": stage_name, "skipped": False, "seconds": round(seconds, 2),
            "metrics": read_stage_metrics(root, stage), "outs": list(stage.outs)}
