"""The Prefect flows end to end on a tiny project: real Prefect (test server), real DVC, real MLflow (SQLite).

Covers: every stage runs as a task and lands in MLflow as a child run; a second run skips what DVC finds up to
date; registration + promotion (the first version becomes champion, an equal challenger does not); a stage
that fails once is retried; a crash resumes at the failed stage without redoing finished ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_project import tiny_project


@pytest.fixture(scope="module")
def prefect_env(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect_home")
    old = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_env) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    return tiny_project(tmp_path_factory.mktemp("flow_project"))


def _client(project: Path):
    from flows.tracking_tasks import client_for

    return client_for(project)


@pytest.mark.slow
def test_pipeline_tracks_registers_promotes_and_skips(project, monkeypatch):
    import flows.stage_task as stage_task
    from flows.pipeline import pipeline

    calls: list[str] = []
    resumed: dict[str, list[bool]] = {}
    real_call = stage_task.call_stage

    def flaky(root, name, resume=False):  # decompose fails on its first attempt; train crashes after its checkpoint
        calls.append(name)
        resumed.setdefault(name, []).append(resume)
        if name == "decompose" and calls.count("decompose") == 1:
            raise RuntimeError("injected fault")
        real_call(root, name, resume)
        if name == "train-diffusion" and calls.count("train-diffusion") == 1:
            raise RuntimeError("injected crash after the checkpoint")

    monkeypatch.setattr(stage_task, "call_stage", flaky)
    first = pipeline(project=str(project))
    assert [s["stage"] for s in first["stages"]] == ["ingest", "decompose", "train-ae", "train-diffusion",
                                                      "evaluate", "export"]
    assert not any(s["skipped"] for s in first["stages"])
    assert calls.count("decompose") == 2          # failed once, retried, succeeded
    # every attempt of a checkpointing stage asks to resume: the first finds no checkpoint and starts fresh,
    # the retry continues from the checkpoint its settings and inputs match
    assert resumed["train-diffusion"] == [True, True]
    assert resumed["decompose"] == [False, False]        # a stage without checkpoints simply reruns
    assert first["model_version"] == "1" and "champion" in first["aliases"] and "challenger" in first["aliases"]
    assert (project / "models" / "export" / "manifest.json").is_file()

    client = _client(project)
    parent = client.get_run(first["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags["dvdm.stage"] for r in children) == sorted(
        ["ingest", "decompose", "train-ae", "train-diffusion", "evaluate", "export"])
    assert all(r.info.status == "FINISHED" for r in children)   # the retried stage has one run, not two
    train = next(r for r in children if r.data.tags["dvdm.stage"] == "train-diffusion")
    assert "loss" in train.data.metrics and "train.steps" in train.data.params
    check_tracking(client, project, parent, train, first)
    from dvdm.tracking.registry import get_version

    mv = get_version(client, "champion", "dvdm")
    import mlflow.artifacts

    top = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(artifact_uri=mv.source)}
    assert {"MLmodel", "data", "code"} <= top  # an MLflow pyfunc model (tests/test_mlflow_pyfunc.py)
    files = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(artifact_uri=f"{mv.source}/data/export")}
    assert {"manifest.json", "MODEL_CARD.md", "evaluation.json"} <= files  # the export inside it

    # nothing changed: every stage is skipped; the new version ties the champion, so it is not promoted
    calls.clear()
    second = pipeline(project=str(project))
    assert all(s["skipped"] for s in second["stages"]) and calls == []
    assert second["model_version"] == "2" and second["aliases"] == ["challenger"]
    assert second["promotion"]["promote"] is False
    assert get_version(client, "champion", "dvdm").version in (1, "1")

    # the gate alone: a challenger whose recorded PSNR is better (as after a better training run) wins
    from flows.promote import promote
    from flows.retrain import retrain

    run_2 = client.get_model_version("dvdm", "2").run_id
    client.log_metric(run_2, "psnr", client.get_run(run_2).data.metrics["psnr"] + 1.0)
    decision = promote(project=str(project), version="2")
    assert decision["promote"] is True and get_version(client, "champion", "dvdm").version in (2, "2")
    tags = client.get_model_version("dvdm", "2").tags
    assert tags["previous_champion"] == "1" and "promoted_at" in tags

    # the scheduled flow: data unchanged since the champion -> nothing is trained
    calls.clear()
    r = retrain(project=str(project))
    assert r["retrained"] is False and "unchanged" in r["reason"] and calls == []


def check_tracking(client, project: Path, parent, train, result: dict) -> None:
    """What MLflow shows of a pipeline run: runs comparable on quality, real stage times, dense curves,
    descriptions, git commit, datasets; the registered version without metric tags, its card renders."""
    import json

    assert {"psnr", "ssim", "swap_direction_accuracy", "train-diffusion/loss", "pipeline_seconds"} \
        <= set(parent.data.metrics)
    from dvdm.tracking.runs import GIT_COMMIT_TAG, git_commit

    assert "ED-VDM" in parent.data.tags["mlflow.note.content"]
    assert parent.data.tags.get(GIT_COMMIT_TAG) == train.data.tags.get(GIT_COMMIT_TAG) == git_commit(project)
    assert "Stage `train-diffusion`" in train.data.tags["mlflow.note.content"]
    seconds = next(s["seconds"] for s in result["stages"] if s["stage"] == "train-diffusion")
    assert train.info.end_time - train.info.start_time >= seconds * 1000 - 1  # the stage's time, not the logging's
    logged = [json.loads(line) for line in (project / "models/diffusion/metrics.jsonl").read_text().splitlines()]
    history = client.get_metric_history(train.info.run_id, "loss")
    assert [m.step for m in history] == [r["step"] for r in logged if "loss" in r]  # every logged step
    from flows.dvc_stages import data_hash

    assert [(d.dataset.name, d.dataset.digest) for d in train.inputs.dataset_inputs] == \
        [("data/ingested", data_hash(project))]  # the data it trained on, by its DVC hash
    version = client.get_model_version("dvdm", result["model_version"])
    assert not [t for t in version.tags if t.startswith("metric.")] and "ED-VDM" in version.description
    import mlflow.artifacts

    folder = mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=client.tracking_uri)
    card = next(Path(folder).rglob("MODEL_CARD.md")).read_text()  # the UI renders it as markdown
    assert card.startswith("# Model card") and "Method: **ED-VDM**" in card


@pytest.mark.slow
def test_crash_resumes_at_the_failed_stage(project, monkeypatch):
    import flows.stage_task as stage_task
    from flows.pipeline import pipeline

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["lr"] = 0.0003                 # invalidates train-diffusion and everything after it
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    real_call = stage_task.call_stage
    calls: list[str] = []

    def broken(root, name, resume=False):
        calls.append(name)
        if name == "evaluate":
            raise RuntimeError("injected crash")
        real_call(root, name, resume)

    monkeypatch.setattr(stage_task, "call_stage", broken)
    with pytest.raises(Exception, match="injected crash"):
        pipeline(project=str(project), register_model=False)
    assert calls.count("evaluate") == 3             # 1 try + 2 retries
    assert "train-diffusion" in calls and "ingest" not in calls

    calls.clear()
    monkeypatch.setattr(stage_task, "call_stage",
                        lambda root, name, resume=False: (calls.append(name), real_call(root, name, resume))[1])
    again = pipeline(project=str(project), register_model=False)
    assert calls == ["evaluate", "export"]          # finished stages are not redone
    assert [s["skipped"] for s in again["stages"]] == [True, True, True, True, False, False]


@pytest.mark.slow
def test_cli_pipeline_and_models(project, tmp_path):
    """The README's main-job command through the console entry point (its own temporary Prefect server)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    r = subprocess.run([sys.executable, "-m", "dvdm", "pipeline", "--project", str(project), "--no-register"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[ingest         ] up to date, skipped" in r.stdout and "pipeline finished in" in r.stdout
    assert "MLflow run " in r.stdout and "sample video: " in r.stdout
    r = subprocess.run([sys.executable, "-m", "dvdm", "models", "--project", str(project), "--json"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import json

    versions = json.loads(r.stdout)
    assert [v["version"] for v in versions][:2] in (["2", "1"], [2, 1])
    assert "champion" in versions[0]["aliases"]
