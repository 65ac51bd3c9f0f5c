"""MLflow for the flows: the parent run, a child run per stage, registration and the promotion gate.

Thin Prefect tasks over `dvdm.tracking` (which knows nothing of Prefect). Runs are addressed by explicit ids
and found again by key on a retry, so a retried task neither duplicates nor orphans a run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from dvdm.config import as_dict, section
from dvdm.stages.curves import LOG_FILE, read_log
from dvdm.stages.registry import PARAMS_FILE, get_stage
from dvdm.tracking import registry, runs
from dvdm.tracking.model_card import method_name, write_model_card
from dvdm.tracking.promotion import Gate, promote
from dvdm.tracking.store import open_client, project_work_dir, resolve_tracking_uri
from flows.dvc_stages import data_hash, lock_entries, read_stages
from serving.mlflow_model import register_export

QUALITY_STAGE = "evaluate"  # its results are the model's quality: logged on the pipeline run, read by the gate


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
                            tags={**tags, **runs.source_tags("dvdm pipeline", project), **runs.owner_tags(),
                                  "dvdm.kind": "pipeline"})
    runs.log_config(client, run_id, params, artifact_file="params.json")
    runs.set_description(client, run_id, pipeline_description(project))
    return {"run_id": run_id, "experiment": experiment, "tracking_uri": resolve_tracking_uri(work=work_dir(project))}


def pipeline_description(project: str | Path, result: dict[str, Any] | None = None) -> str:
    """The pipeline run's description (markdown): what it trains, on which data and code; once finished, what
    each stage did and which model version it registered."""
    train, ingest = project_section(project, "train"), project_section(project, "ingest")
    method = method_name(train.space) or train.space
    commit = runs.git_commit(project)
    lines = [f"dvdm pipeline: **{method}** (target space `{train.space}`), image + prompt -> "
             f"{ingest.frames}x{ingest.height}x{ingest.width} video, data source `{ingest.source}`"
             + (f", code `{commit[:10]}`." if commit else ".")]
    if result is not None:
        lines += ["", "| stage | ran | seconds | headline |", "|---|---|---|---|"]
        for s in result["stages"]:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in s["metrics"].items())
            lines.append(f"| {s['stage']} | {'no (up to date)' if s['skipped'] else 'yes'} | {s['seconds']:.0f} "
                         f"| {shown} |")
        if result.get("model_version"):
            lines += ["", f"Registered `{result['model_name']}` version {result['model_version']} (aliases: "
                      f"{', '.join(result.get('aliases') or []) or 'none'}). Gate: "
                      f"{(result.get('promotion') or {}).get('reason', 'not run')}."]
    return "\n".join(lines)


def stage_window(result: dict[str, Any]) -> tuple[int, int]:
    """When a stage's work started and ended (epoch ms): the flow logs a stage right after it ran, so it ended
    about now, and it took `result["seconds"]` (0 for a skipped stage)."""
    end = int(time.time() * 1000)
    return end - int(float(result["seconds"]) * 1000), end


def curve_points(records: list[dict[str, Any]], start_ms: int, end_ms: int) -> list[tuple[int, int, dict]]:
    """(step, time, values) per record of a trainer log, every logged step kept. The time comes from the
    trainer's own rate (step / steps_per_second after the stage started; a record without a rate takes the
    last one seen), within the stage's window."""
    points, rate = [], None
    for rec in records:
        if "step" not in rec:
            continue
        if isinstance(rec.get("steps_per_second"), (int, float)) and rec["steps_per_second"] > 0:
            rate = rec["steps_per_second"]
        at = start_ms + int(rec["step"] / rate * 1000) if rate else end_ms
        points.append((int(rec["step"]), min(at, end_ms), {k: v for k, v in rec.items() if k != "step"}))
    return points


def stage_results(root: Path, stage_name: str) -> dict[str, Any]:
    """What a stage recorded in its results file (`PipelineStage.results`); {} when it has none (yet)."""
    name = get_stage(stage_name).results
    path = root / name if name else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else {}


def log_quality(client: Any, run_id: str, evaluation: dict[str, Any]) -> None:
    """The evaluation's numbers as metrics of the pipeline run (the runs table compares pipelines on them, the
    promotion gate reads them), those the run does not have yet: a retried task logs nothing twice."""
    have = runs.get_run(client, run_id).data.metrics
    runs.log_metrics(client, run_id, {k: v for k, v in runs.measured_values(evaluation).items() if k not in have})


def stage_description(stage: Any, result: dict[str, Any]) -> str:
    """A stage run's description (markdown): its command, whether it ran, its headline numbers."""
    ran = ("skipped: up to date (dvc status)" if result["skipped"]
           else f"ran in {float(result['seconds']):.1f} s")
    lines = [f"Stage `{stage.name}` of dvc.yaml, {ran}: `{' '.join(get_stage(stage.name).arguments())}`"]
    if result["metrics"]:
        lines += ["", "Headline (" + ", ".join(stage.metrics) + "): "
                  + ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items())]
    return "\n".join(lines)


@task(name="mlflow-stage", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def log_stage(project: str, parent: dict[str, Any], result: dict[str, Any]) -> str:
    """A child run for one stage, timed as the stage ran: its params section, the numbers of its results file,
    its training curve at every logged step, the DVC-tracked data it read (datasets with their DVC hash), its
    outputs as artifacts. On the pipeline run: the quality stage's numbers under their own names, another
    stage's headline (its DVC metrics) as `<stage>/<name>` (the UI groups the charts by stage)."""
    client = client_for(project)
    root = Path(project)
    stage = read_stages(root)[result["stage"]]
    started, ended = stage_window(result)
    tags = {"dvdm.stage": stage.name, "dvdm.skipped": str(result["skipped"]).lower(),
            **runs.source_tags(f"dvdm {get_stage(stage.name).command}", root),
            **{f"dvdm.worker.{k}": v for k, v in result.get("worker", {}).items()}}
    with runs.tracked_run(client, result["stage"], parent_run_id=parent["run_id"], name=result["stage"],
                          tags=tags, start_time_ms=started, end_time_ms=ended) as rid:
        runs.set_description(client, rid, stage_description(stage, result))
        params = project_params(root)
        config = {p: params.get(p.replace("-", "_"), params.get(p)) for p in stage.params}
        runs.log_config(client, rid, {k: v for k, v in config.items() if v is not None}, artifact_file="params.json")
        # the headline names (loss, ssim) are also curve names: on the stage run they would join the curve
        results = stage_results(root, stage.name)
        runs.log_metrics(client, rid, {**runs.measured_values(results), "stage_seconds": result["seconds"]},
                         timestamp_ms=ended)
        if stage.name == QUALITY_STAGE:
            log_quality(client, parent["run_id"], results)
        else:
            runs.log_metrics(client, parent["run_id"], {f"{stage.name}/{k}": v for k, v in result["metrics"].items()},
                             timestamp_ms=ended)
        for out in stage.outs:
            if Path(out).name == LOG_FILE:
                runs.log_history(client, rid, curve_points(read_log(root / out), started, ended))
        for dep in (lock_entries(root).get(stage.name) or {}).get("deps") or []:
            if str(dep.get("path", "")).startswith("data/") and dep.get("md5"):
                runs.log_dataset(client, rid, dep["path"], dep["md5"], context=stage.name)
                runs.log_dataset(client, parent["run_id"], dep["path"], dep["md5"])
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
    evaluation = stage_results(root, QUALITY_STAGE)
    log_quality(client, parent["run_id"], evaluation)  # already there when evaluate ran in this pipeline
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
        tags = runs.provenance_tags(root, data_hash=data_hash(root), space=train.space)
        # an MLflow pyfunc model (mlflow.pyfunc.load_model, mlflow models serve); metrics stay metrics of the
        # run (the gate and `dvdm models` read them there), not version tags
        mv = register_export(client, parent["run_id"], staging / "model", name=model_name,
                             tags={**tags, "dvdm.artifact": kind}, alias=registry.CHALLENGER)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    decision = promote(client, mv.version, Gate.from_params(project_section(root, "promote")), name=model_name)
    describe_model(client, model_name, mv.version, train.space, evaluation, decision.reason, parent["run_id"])
    current = client.get_model_version(model_name, str(mv.version))
    runs.set_tags(client, parent["run_id"], {"dvdm.model_version": mv.version, "dvdm.promoted": decision.promote,
                                             **tags})
    return {"model_name": model_name, "model_version": str(mv.version), "aliases": list(current.aliases),
            "promotion": decision.to_dict()}


MODEL_DESCRIPTION = (
    "dvdm: one image + a text prompt -> a short video, by diffusion in a decoupled content/motion space "
    "(ED-VDM: block motion vectors + autoencoded residuals; D-VDM: frame differences). Each version is the "
    "ONNX export of one pipeline run (its source run holds the metrics, params, datasets and curves; "
    "`MODEL_CARD.md` in the version's files says how it was trained and evaluated). Aliases: `challenger` = "
    "the newest version, `champion` = the one the promotion gate let through (what `dvdm serve` serves).")


def describe_model(client: Any, name: str, version: str | int, space: str, evaluation: dict[str, Any],
                   gate: str, run_id: str) -> None:
    """The registered model's description, and the version's: method, key numbers, the gate's decision."""
    client.update_registered_model(name, description=MODEL_DESCRIPTION)
    shown = ", ".join(f"{k} {evaluation[k]:.4g}" for k in ("swap_direction_accuracy", "swap_speed_accuracy",
                                                             "psnr", "ssim", "fvd")
                      if isinstance(evaluation.get(k), (int, float)))
    text = (f"**{method_name(space) or space}** (target space `{space}`) from pipeline run `{run_id}`"
            + (f": {shown}" if shown else "") + f". Promotion gate: {gate}")
    client.update_model_version(name, str(version), description=text)


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
        runs.set_description(client, parent["run_id"], pipeline_description(project, result))
    if status == "FINISHED":
        runs.end_run(client, parent["run_id"])
    else:
        runs.fail_run(client, parent["run_id"], "a pipeline stage failed")
