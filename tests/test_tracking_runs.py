"""dvdm.tracking store + runs on a real MLflow SQLite store in a temp dir.

The store is module-scoped and copied from a session template: creating a fresh MLflow database runs its
migrations (~3 s); a copy opens in milliseconds. Every test uses its own experiment, so they stay
independent. The URI is always explicit: nothing here touches ./work or the caller's MLFLOW_TRACKING_URI.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dvdm.tracking import runs
from dvdm.tracking.errors import TrackingError
from dvdm.tracking.store import (artifact_root, embedded_uri, ensure_experiment,
                                 resolve_tracking_uri, sqlite_path, work_dir)


@pytest.fixture(scope="module")
def client(mlflow_store):
    return mlflow_store("runs-store")


# ---------------------------------------------------------------------------------------------- store


def test_uri_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVDM_WORK_DIR", str(tmp_path / "w"))
    assert work_dir() == (tmp_path / "w").resolve()
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'w' / 'mlflow' / 'mlflow.db'}"
    assert resolve_tracking_uri(work=tmp_path / "x") == embedded_uri(tmp_path / "x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri() == "http://tracking:5000"
    assert resolve_tracking_uri("sqlite:////elsewhere/m.db") == "sqlite:////elsewhere/m.db"  # explicit wins
    assert resolve_tracking_uri(str(tmp_path / "my.db")) == f"sqlite:///{tmp_path.resolve() / 'my.db'}"
    with pytest.raises(TrackingError, match="URI"):
        resolve_tracking_uri(str(tmp_path / "folder"))
    monkeypatch.delenv("DVDM_WORK_DIR")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    # the project's own work dir (relative default `work/`), resolved to an absolute sqlite URI
    assert resolve_tracking_uri().endswith(str(Path("work", "mlflow", "mlflow.db")))
    assert resolve_tracking_uri().startswith("sqlite:////")


def test_sqlite_paths_and_artifact_root():
    assert sqlite_path("sqlite:////abs/dir/mlflow.db") == Path("/abs/dir/mlflow.db")
    assert sqlite_path("http://host") is None and artifact_root("http://host") is None
    assert artifact_root("sqlite:////abs/dir/mlflow.db") == Path("/abs/dir/artifacts")


def test_experiment_created_once_with_local_artifacts(client):
    exp_id = ensure_experiment(client, "dvdm-store-test")
    assert ensure_experiment(client, "dvdm-store-test") == exp_id
    root = artifact_root(client.tracking_uri)
    assert client.get_experiment(exp_id).artifact_location == (root / "dvdm-store-test").as_uri()
    client.delete_experiment(exp_id)
    assert ensure_experiment(client, "dvdm-store-test") == exp_id  # a deleted experiment is restored
    assert client.get_experiment(exp_id).lifecycle_stage == "active"


# ---------------------------------------------------------------------------------------------- runs


def test_parent_and_child_runs_log_params_metrics_artifacts_tags(client, tmp_path):
    exp = runs.experiment_name("synthetic-a")
    parent = runs.start_run(client, exp, "flow-1", name="pipeline", tags={"dvdm.preset": "tiny"})
    child = runs.start_child_run(client, parent, "train-diffusion", name="train-diffusion",
                                 tags=runs.provenance_tags(Path.cwd(), data_hash="a" * 32 + ".dir", space="mvres"))
    info = client.get_run(child)
    assert info.data.tags[runs.PARENT_TAG] == parent
    assert info.info.experiment_id == client.get_run(parent).info.experiment_id
    assert info.data.tags[runs.SPACE_TAG] == "mvres"
    assert info.data.tags[runs.DATA_HASH_TAG] == "a" * 32 + ".dir"
    assert info.data.tags.get(runs.GIT_COMMIT_TAG) == runs.git_commit(Path.cwd())

    config = {"train": {"steps": 3, "betas": [0.9, 0.99], "unet": {"base_channels": 8}, "extra": {}},
              "space": "mvres", "long": "x" * 7000, "bad key!": 1}
    params = runs.log_config(client, child, config)
    got = client.get_run(child).data.params
    assert got["train.steps"] == "3" and got["train.betas"] == "[0.9, 0.99]"
    assert got["train.unet.base_channels"] == "8" and got["train.extra"] == "{}"
    assert len(got["long"]) == runs.MAX_PARAM_VALUE and got["long"].endswith("[truncated]")
    assert got["bad key_"] == "1" and params == got
    runs.log_config(client, child, config)  # same values again (a retry): fine
    with pytest.raises(TrackingError, match="different values"):
        runs.log_config(client, child, {**config, "space": "rgb"})

    for step in (1, 2, 3):
        runs.log_metrics(client, child, {"loss": 1.0 / step, "nested": {"psnr": 20.0 + step}, "note": "x"}, step)
    history = client.get_metric_history(child, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert client.get_run(child).data.metrics["nested.psnr"] == 23.0

    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "metrics.json").write_text("{}")
    (tmp_path / "grid.gif").write_bytes(b"GIF89a")
    assert runs.log_artifacts(client, child, tmp_path / "report", "evaluate") == "evaluate"
    assert runs.log_artifacts(client, child, tmp_path / "grid.gif", "samples") == "samples/grid.gif"
    names = {a.path for a in client.list_artifacts(child)}
    assert {"config.json", "evaluate", "samples"} <= names
    with pytest.raises(TrackingError, match="no such file"):
        runs.log_artifacts(client, child, tmp_path / "missing")

    runs.end_run(client, child)
    runs.end_run(client, parent)
    assert client.get_run(child).info.status == "FINISHED"


def test_retry_reuses_the_run_and_failed_runs_are_marked(client):
    exp = runs.experiment_name("synthetic-retry")
    parent = runs.start_run(client, exp, "flow-2")
    assert runs.start_run(client, exp, "flow-2") == parent  # a retried flow gets its parent back

    first = runs.start_child_run(client, parent, "train")
    runs.fail_run(client, first, RuntimeError("boom"))
    failed = client.get_run(first)
    assert failed.info.status == "FAILED" and failed.data.tags[runs.ERROR_TAG] == "RuntimeError: boom"
    again = runs.start_child_run(client, parent, "train")  # the task's retry
    assert again == first
    resumed = client.get_run(first)
    assert resumed.info.status == "RUNNING" and runs.ERROR_TAG not in resumed.data.tags
    other = runs.start_child_run(client, parent, "evaluate")
    assert other != first
    exp_id = client.get_run(parent).info.experiment_id
    keyed = client.search_runs([exp_id], f"tags.`{runs.RUN_KEY_TAG}` = 'train'")
    assert len(keyed) == 1  # no duplicated or orphaned run

    runs.end_run(client, first)
    rerun = runs.start_child_run(client, parent, "train")  # a finished stage run again: a new run
    assert rerun != first
    assert runs.start_child_run(client, parent, "train", reuse_finished=True) == rerun

    other_parent = runs.start_run(client, exp, "flow-3")
    assert runs.start_child_run(client, other_parent, "train") not in (first, rerun)  # keys are per parent
    assert runs.start_run(client, exp, "train") not in (first, rerun)  # a parent key never matches a child


def test_tracked_run_statuses(client):
    exp = runs.experiment_name("synthetic-ctx")
    with runs.tracked_run(client, "ok", experiment=exp) as parent:
        pass
    assert client.get_run(parent).info.status == "FINISHED"
    with pytest.raises(ValueError):
        with runs.tracked_run(client, "stage", parent_run_id=parent) as child:
            raise ValueError("bad input")
    assert client.get_run(child).info.status == "FAILED"
    with runs.tracked_run(client, "stage", parent_run_id=parent) as retried:
        pass
    assert retried == child and client.get_run(child).info.status == "FINISHED"
    with pytest.raises(TrackingError):
        with runs.tracked_run(client, "no-experiment"):
            pass
    with pytest.raises(TrackingError, match="quotes"):
        runs.start_run(client, exp, "it's")


def test_a_run_logged_after_its_work_shows_the_real_duration_curve_description_and_data(client, tmp_path):
    exp = runs.experiment_name("synthetic-times")
    parent = runs.start_run(client, exp, "flow-times")
    with runs.tracked_run(client, "train", parent_run_id=parent, start_time_ms=1_000_000,
                          end_time_ms=1_090_000) as child:
        runs.set_description(client, child, "Stage `train`: **ran**")
        # a training curve: every logged step at its own step and time (200 points, not one per call)
        assert runs.log_history(client, child, [(s, 1_000_000 + 400 * s, {"loss": 1 / s, "note": "x"})
                                                for s in range(1, 201)]) == 200
        for _ in range(2):  # a retried task logs the same dataset again: still one input
            runs.log_dataset(client, child, "data/ingested", "a" * 32 + ".dir", context="train-diffusion")
    run = client.get_run(child)
    assert (run.info.start_time, run.info.end_time) == (1_000_000, 1_090_000)  # 90 s, not the logging time
    assert run.data.tags[runs.DESCRIPTION_TAG] == "Stage `train`: **ran**"
    history = client.get_metric_history(child, "loss")
    assert [m.step for m in history] == list(range(1, 201)) and history[-1].timestamp == 1_080_000
    (dataset,) = run.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("data/ingested", "a" * 32 + ".dir")
    assert json.loads(dataset.dataset.source) == {"uri": "data/ingested"}  # where dvc pull puts it, anywhere
    assert [(t.key, t.value) for t in dataset.tags] == [(runs.DATASET_CONTEXT_TAG, "train-diffusion")]


def test_measured_values_leave_settings_and_protocols_out():
    results = {"psnr": 24.5, "n_clips": 8, "space": "mvres", "motion_chance": {"direction": 0.125},
               "params": {"steps": 25}, "fvd_protocol": {"n_real": 8}, "ssim_protocol": {"window": 11}}
    assert runs.measured_values(results) == {"psnr": 24.5, "n_clips": 8.0, "motion_chance.direction": 0.125}


# ---------------------------------------------------------------------------------------------- provenance


def test_dvc_data_hash(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text("""schema: '2.0'
stages:
  ingest:
    cmd: dvdm ingest
    outs:
    - path: data/ingested
      hash: md5
      md5: 68ece9d7681a4d79183e404919003ee2.dir
  decompose:
    cmd: dvdm decompose
    outs:
    - path: data/decomposed
      md5: 9397a78909e54c233ad74463e6ab0456.dir
    - path: metrics/decompose.json
      md5: 381906ab929f7edffde428b3ac6783b7
""")
    assert runs.dvc_data_hash(lock, out="data/ingested") == "68ece9d7681a4d79183e404919003ee2.dir"
    assert runs.dvc_data_hash(lock, stage="ingest") == "68ece9d7681a4d79183e404919003ee2.dir"
    combined = runs.dvc_data_hash(lock, stage="decompose")
    assert len(combined) == 32 and combined == runs.dvc_data_hash(lock, stage="decompose")
    assert runs.dvc_data_hash(lock) not in (combined, "68ece9d7681a4d79183e404919003ee2.dir")
    assert runs.dvc_data_hash("0123456789abcdef0123456789abcdef") == "0123456789abcdef0123456789abcdef"
    dvcfile = tmp_path / "data.dvc"
    dvcfile.write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: data\n")
    assert runs.dvc_data_hash(dvcfile) == "0123456789abcdef0123456789abcdef.dir"
    with pytest.raises(TrackingError, match="no output"):
        runs.dvc_data_hash(lock, out="data/other")
    with pytest.raises(TrackingError, match="no stage"):
        runs.dvc_data_hash(lock, stage="export")
    with pytest.raises(TrackingError):
        runs.dvc_data_hash(tmp_path / "missing.lock")


def test_git_commit_outside_a_repo(tmp_path):
    assert runs.git_commit(tmp_path) is None
    assert runs.source_tags("dvdm pipeline", tmp_path) == {runs.SOURCE_NAME_TAG: "dvdm pipeline",
                                                           runs.SOURCE_TYPE_TAG: "LOCAL"}
    assert runs.source_tags("dvdm train", Path.cwd()).get(runs.GIT_COMMIT_TAG) == runs.git_commit(Path.cwd())


def test_clean_key():
    assert runs.clean_key("a/b.c-d e:f") == "a/b.c-d e:f"
    assert runs.clean_key("loss[0]") == "loss_0_"
    assert runs.clean_key("a//b") == "a__b" and runs.clean_key("/x") == "_x" and runs.clean_key("..") == "_"
    assert len(runs.clean_key("k" * 400)) == runs.MAX_KEY


# ---------------------------------------------------------------------------------------------- orphans


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_runs_of_a_dead_pipeline_are_closed_and_live_ones_left_alone(mlflow_store):
    import os

    client = mlflow_store("orphans")
    exp = runs.experiment_name("synthetic-orphans")
    dead = runs.start_run(client, exp, "killed-flow", tags={**runs.owner_tags(_dead_pid()), "dvdm.kind": "pipeline"})
    dead_child = runs.start_child_run(client, dead, "train-diffusion")
    live = runs.start_run(client, exp, "live-flow", tags=runs.owner_tags())           # this process: alive
    reused = runs.start_run(client, exp, "reused-pid", tags={**runs.owner_tags(), runs.OWNER_STARTED_TAG: "x/1"})
    remote = runs.start_run(client, exp, "other-host", tags={**runs.owner_tags(_dead_pid()),
                                                              runs.OWNER_HOST_TAG: "another-host.example"})
    untagged = runs.start_run(client, exp, "before-owner-tags")                        # cannot be told: kept
    finished = runs.start_run(client, exp, "finished", tags=runs.owner_tags(_dead_pid()))
    runs.end_run(client, finished)

    closed = runs.close_orphaned_runs(client)

    assert sorted(closed) == sorted([dead, dead_child, reused])
    for run_id in (dead, dead_child, reused):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.info.end_time is not None
        assert "died without ending the run" in run.data.tags[runs.ERROR_TAG]
    for run_id in (live, remote, untagged):
        assert client.get_run(run_id).info.status == "RUNNING"
    assert client.get_run(finished).info.status == "FINISHED"
    assert client.get_run(live).data.tags[runs.OWNER_PID_TAG] == str(os.getpid())
    assert runs.close_orphaned_runs(client) == []  # nothing left to close


def test_owner_liveness():
    import os

    assert runs.owner_alive(runs.owner_tags()) is True
    assert runs.owner_alive(runs.owner_tags(_dead_pid())) is False
    assert runs.owner_alive({}) is None
    assert runs.owner_alive({**runs.owner_tags(), runs.OWNER_HOST_TAG: "elsewhere"}) is None
    if runs.process_start_time(os.getpid()) is not None:  # Linux: a reused pid is not its old owner
        assert runs.owner_alive({**runs.owner_tags(), runs.OWNER_STARTED_TAG: "x/1"}) is False
