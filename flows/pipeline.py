"""Flow `dvdm-pipeline`: every `dvc.yaml` stage in order, tracked in MLflow, then register + promote.

- each stage is a task with retries; DVC decides what is up to date (a rerun after a crash resumes at the
  stage that failed, finished stages are skipped) and `dvc commit` records what ran;
- one MLflow parent run per flow run and a child run per stage, addressed by explicit run ids; a retried
  task reuses its child run (looked up by key), so retries never duplicate or orphan runs;
- when an `export` stage exists, its folder becomes a new version of the registered model with alias
  `challenger`, and the promotion gate decides whether it also becomes `champion`;
- a markdown summary artifact (metrics, sample paths, model version) shows in the Prefect UI;
- it says where it is as it goes (`[3/6] train-ae: ...` lines with the time since it started, between the
  stages' own progress bars or lines), on the terminal and in the run's log in the Prefect UI.

Tasks exchange paths, names, run ids and metric dicts only.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from flows.environment import configure, library_logs_in_run_log, project_dir

configure()

from prefect import flow, get_run_logger  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from dvdm.config import as_dict  # noqa: E402
from dvdm.errors import ConfigError  # noqa: E402
from dvdm.stages.registry import STAGES  # noqa: E402
from dvdm.utils.progress import announce, format_duration  # noqa: E402
from flows import tracking_tasks  # noqa: E402
from flows import placement as placed  # noqa: E402
from flows.dvc_stages import data_hash, read_stages, use_remote  # noqa: E402
from flows.stage_task import run_stage  # noqa: E402


def summary_markdown(result: dict[str, Any]) -> str:
    lines = [f"# dvdm pipeline ({result['seconds']:.0f} s)", "", "| stage | ran | seconds | key metrics |",
             "|---|---|---|---|"]
    for s in result["stages"]:
        keys = [k for k in ("clips", "roundtrip_max_abs_error", "residual_psnr", "reconstruction_psnr", "val_loss",
                            "fvd", "psnr", "ssim", "motion_accuracy", "parity.end_to_end_psnr")
                if k in s["metrics"]]
        shown = ", ".join(f"{k} {s['metrics'][k]:.4g}" for k in keys)
        lines.append(f"| {s['stage']} | {'skipped (up to date)' if s['skipped'] else 'yes'} | {s['seconds']} | "
                     f"{shown} |")
    lines.append("")
    if result.get("model_version"):
        lines.append(f"Registered model `{result['model_name']}` version **{result['model_version']}** "
                     f"(aliases: {', '.join(result.get('aliases') or []) or 'none'}).")
        if result.get("promotion"):
            lines.append(f"Promotion gate: {result['promotion'].get('reason')}")
    if result.get("sample_video"):
        lines.append(f"Sample video: `{result['sample_video']}`")
    if result.get("mlflow_run_id"):
        lines.append(f"MLflow parent run: `{result['mlflow_run_id']}` ({result.get('tracking_uri')})")
    return "\n".join(lines)


@flow(name="dvdm-pipeline", log_prints=True)
def pipeline(project: str | None = None, force: bool = False, register_model: bool = True, stages: list[str] | None = None,
             model_name: str = "dvdm", placement: str | None = None) -> dict[str, Any]:
    """Run the DVC stages of `project` in order (all, or `stages`), track them, register and promote.

    `placement` overrides params.yaml's `placement.mode`: `local` runs every stage in this flow's process,
    `pools` sends each to its deployment's work pool (flows/placement.py)."""
    with library_logs_in_run_log():
        return _pipeline(project, force, register_model, stages, model_name, placement)


def _pipeline(project: str | None, force: bool, register_model: bool, stages: list[str] | None, model_name: str,
              placement: str | None) -> dict[str, Any]:
    """The flow's body (see `pipeline`)."""
    logger = get_run_logger()
    root = project_dir(project)
    started = time.perf_counter()

    def where(text: str) -> None:  # on the terminal and in the run's log
        announce(f"{text} (pipeline at {format_duration(time.perf_counter() - started)})")

    all_stages = read_stages(root)
    names = list(stages) if stages else list(all_stages)
    unknown = [n for n in names if n not in all_stages]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {list(all_stages)}")
    unregistered = [n for n in names if n not in STAGES]
    if unregistered:  # found before anything runs, not after the stages before it
        raise ConfigError(f"dvc.yaml stage(s) {unregistered} have no function in dvdm.stages.registry")
    key = f"pipeline-{flow_run.get_id() or 'local'}"
    settings = tracking_tasks.project_section(root, "placement")
    if placement:
        settings = dataclasses.replace(settings, mode=placement)
    parent = tracking_tasks.start_pipeline_run(str(root), key)
    results = []
    try:
        if settings.mode == "pools":
            placed.check_shared(settings, parent["tracking_uri"])
            source = placed.project_source(root, settings)
            use_remote(root, settings.dvc_remote)
            logger.info("placing stages on work pools: %s at %s, data through %s", *source, settings.dvc_remote)
            run_placed_stage = placed.placed_stage_task(settings)
        for k, name in enumerate(names, 1):
            where(f"[{k}/{len(names)}] {name}: started")
            if settings.mode == "pools":
                res = run_placed_stage(str(root), name, as_dict(settings), source, parent, force=force)
            else:
                res = run_stage(str(root), name, force=force)
                tracking_tasks.log_stage(str(root), parent, res)
            results.append(res)
            where(f"[{k}/{len(names)}] {name}: "
                  + ("up to date, skipped" if res["skipped"] else f"done in {format_duration(res['seconds'])}"))
        if settings.mode == "pools":
            placed.fetch_for_registration(str(root))
        out: dict[str, Any] = {"stages": results, "mlflow_run_id": parent["run_id"],
                               "tracking_uri": parent["tracking_uri"], "data_hash": data_hash(root)}
        if register_model and "export" in all_stages and "export" in names:
            where(f"registering the export as a version of {model_name!r} and running the promotion gate")
            out.update(tracking_tasks.register_and_promote(str(root), parent, model_name))
        out["sample_video"] = tracking_tasks.sample_video(str(root))
        out["seconds"] = round(time.perf_counter() - started, 1)
        tracking_tasks.finish_pipeline_run(parent, "FINISHED", out, str(root))
    except BaseException:
        tracking_tasks.finish_pipeline_run(parent, "FAILED", None, str(root))
        raise
    create_markdown_artifact(key="dvdm-pipeline-summary", markdown=summary_markdown(out),
                             description="dvdm pipeline summary")
    logger.info("pipeline finished in %.1fs", out["seconds"])
    return out
