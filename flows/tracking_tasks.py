"""MLflow for the flows: the parent run, a child run per stage, registration and the promotion gate.

Thin Prefect tasks over `dvdm.tracking` (which knows nothing of Prefect). Runs are addressed by explicit ids
and found again by key on a retry, so a retried task neither duplicates nor orphans a run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dvdm.config import as_dict, section
from dvdm.stages.registry import PARAMS_FILE
from dvdm.tracking import registry, runs
from dvdm.tracking.model_card import write_model_card
from dvdm.tracking.promotion import Gate, promote
from dvdm.tracking.store import open_client, project_work_dir, resolve_tracking_uri
from flows.dvc_stages import data_hash, read_stages


def work_dir(project: str | Path) -> Path:
    return project_work_dir(project)


_CLIENTS: dict[str, Any] = {}


def client_for(project: str | Path):
    """One MlflowClient per store for the process: opening a SQLite store checks its schema (~1 s)."""
    uri = resolve_tracking_uri(work=work_dir(project))
    if uri not in _CLIENTS:
        _CLIENTS[uri] = open_client(work=work_dir(project))
    return _CLIENTS[uri]


def project_section(project: str | Path, name: str) -> Any:
    """Section `name` of the project's params.yaml as its typed dataclass (defaults where the file or the
    section is absent)."""
    path = Path(project) / PARAMS_FILE
    return section(path if path.is_file() else None, name)


def project_params(project: str | Path) -> dict[str, Any]:
    path = Path(project) / PARAMS_FILE
    return yaml.safe_load(path.read_text()) or {} if path.is_file() else {}


@task(name="mlflow-start", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def start_pipeline_run(project: str, key: str) -> dict[str, Any]:
    """The parent run, owned by this process (pid/host tags); first closes the runs a killed pipeline left
    RUNNING."""
    client = client_for(project)
    closed = runs.close_orphaned_runs(client)
    if closed:
        get_run_logger().warning("closed %d run(s) left RUNNING by a pipeline that died: %s", len(closed),
                                 ", ".join(closed))
    params = project_params(project)
    experiment = runs.experiment_name(project_section(project, "ingest").source)
    tags = runs.provenance_tags(project, space=project_section(project, "train").space)
    run_id = runs.start_run(client, experiment, key, name="pipeline",
                            tags={**tags, **runs.owner_tags(), "dvdm.kind": "pipeline"})
    runs.log_config(client, run_id, params, artifact_file="params.json")
    return {"run_id": run_id, "experiment": experiment, "tracking_uri": resolve_tracking_uri(work=work_dir(project))}


def _curve(path: Path) -> list[tuple[int, dict[str, float]]]:
    """(step, metrics) of a trainer's metrics.jsonl."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            step = int(rec.pop("step", 0))
            out.append((step, {k: v for k, v in rec.items() if isinstance(v, (int, float))}))
    return out


@task(name="mlflow-stage", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_stage(project: str, parent: dict[str, Any], result: dict[str, Any]) -> str:
    """A child run for one stage: its params section, metrics (curves per step), outputs as artifacts."""
    client = client_for(project)
    root = Path(project)
    stage = read_stages(root)[result["stage"]]
    with runs.tracked_run(client, result["stage"], parent_run_id=parent["run_id"], name=result["stage"],
                          tags={"dvdm.stage": stage.name, "dvdm.skipped": str(result["skipped"]).lower(),
                                **{f"dvdm.worker.{k}": v for k, v in result.get("worker", {}).items()}}) as rid:
        params = project_params(root)
        config = {p: params.get(p.replace("-", "_"), params.get(p)) for p in stage.params}
        runs.log_config(client, rid, {k: v for k, v in config.items() if v is not None}, artifact_file="params.json")
        runs.log_metrics(client, rid, {**result["metrics"], "stage_seconds": result["seconds"]})
        for out in stage.outs:
            path = root / out
            if path.name == "metrics.jsonl" and path.is_file():
                for step, values in _curve(path):
                    runs.log_metrics(client, rid, values, step=step)
        if not result["skipped"]:
            # data folders stay in DVC; models, samples, reports and metrics go to MLflow. The ONNX export
            # is uploaded once, with the registered version (register_and_promote), not twice.
            for out in list(stage.outs) + list(stage.metrics):
                path = root / out
                if not path.exists() or out.startswith("data/"):
                    continue
                if (path / "manifest.json").is_file():
                    path = path / "manifest.json"
                runs.log_artifacts(client, rid, path, artifact_path=str(Path(out).parent))
    return rid


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not supported
        shutil.copy2(src, dst)


def model_folder(root: Path) -> tuple[Path, str]:
    """What a registered version carries: the ONNX export when the pipeline has one, else the checkpoint."""
    stages = read_stages(root)
    if "export" in stages and (root / stages["export"].outs[0]).is_dir():
        return root / stages["export"].outs[0], "onnx-export"
    return root / "models" / "diffusion" / "checkpoint", "torch-checkpoint"


@task(name="register-and-promote", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def register_and_promote(project: str, parent: dict[str, Any], model_name: str = registry.MODEL_NAME) -> dict[str, Any]:
    """New registered version (alias challenger) from this run; the gate decides about champion."""
    client = client_for(project)
    root = Path(project)
    ingest, train, train_ae = (project_section(root, name) for name in ("ingest", "train", "train_ae"))
    folder, kind = model_folder(root)
    evaluation = {}
    metrics_file = root / "metrics" / "evaluate.json"
    if metrics_file.is_file():
        evaluation = json.loads(metrics_file.read_text())
    # staged next to the store, hard-linked where the file system allows: the export is ~90 MB
    work = work_dir(root)
    work.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".register-", dir=work))
    try:
        shutil.copytree(folder, staging / "model", copy_function=_link_or_copy)
        for added in ("evaluation.md", "evaluation.json", "MODEL_CARD.md"):
            (staging / "model" / added).unlink(missing_ok=True)  # never write through a link into the export
        if (root / "reports" / "evaluate" / "report.md").is_file():
            shutil.copy(root / "reports" / "evaluate" / "report.md", staging / "model" / "evaluation.md")
        (staging / "model" / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
        write_model_card(staging / "model" / "MODEL_CARD.md", name=model_name,
                         model={"space": train.space, "unet": train.unet, "artifact": kind,
                                "diffusion": train.diffusion},
                         data={"source": ingest.source, "ingest": as_dict(ingest), "dvc_data_hash": data_hash(root)},
                         training={"train": as_dict(train), "train_ae": as_dict(train_ae)},
                         evaluation=evaluation)
        registry.upload_model(client, parent["run_id"], staging / "model")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tags = runs.provenance_tags(root, data_hash=data_hash(root), space=train.space)
    mv = registry.register_version(client, parent["run_id"], name=model_name,
                                   metrics={k: v for k, v in evaluation.items() if k != "params"},
                                   tags={**tags, "dvdm.artifact": kind}, alias=registry.CHALLENGER)
    decision = promote(client, mv.version, Gate.from_params(project_section(root, "promote")), name=model_name)
    current = client.get_model_version(model_name, str(mv.version))
    runs.set_tags(client, parent["run_id"], {"dvdm.model_version": mv.version, "dvdm.promoted": decision.promote,
                                             **tags})
    return {"model_name": model_name, "model_version": str(mv.version), "aliases": list(current.aliases),
            "promotion": decision.to_dict()}


def sample_video(project: str) -> str | None:
    grid = Path(project) / "reports" / "evaluate" / "grid.mp4"
    return str(grid) if grid.is_file() else None


@task(name="mlflow-finish", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def finish_pipeline_run(parent: dict[str, Any], status: str, result: dict[str, Any] | None,
                        project: str = ".") -> None:
    client = client_for(project)
    if result is not None:
        runs.log_metrics(client, parent["run_id"], {"pipeline_seconds": result.get("seconds", 0.0),
                                                     "stages_run": sum(not s["skipped"] for s in result["stages"])})
    if status == "FINISHED":
        runs.end_run(client, parent["run_id"])
    else:
        runs.fail_run(client, parent["run_id"], "a pipeline stage failed")
