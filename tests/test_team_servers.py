"""The team-scale servers of tests/team_servers.py, for real: an MLflow server and a Prefect server on a
throw-away PostgreSQL, driven over HTTP the way a team's machines drive them, with the records checked in
PostgreSQL itself (so nothing silently fell back to a local SQLite file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from team_servers import ServerURL, start_postgres  # noqa: F401  (the server fixtures: conftest.py)

pytestmark = pytest.mark.slow


def _query(pg, db: str, sql: str, *args) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, dbname=db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def test_mlflow_server_on_postgres_tracks_serves_artifacts_and_registers(mlflow_server: ServerURL, postgres,
                                                                        tmp_path, monkeypatch):
    import mlflow.artifacts
    import mlflow.tracking._model_registry.utils as registry_utils
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from mlflow import MlflowClient

    # a client-side fallback to a local store would write ./mlflow.db: keep it out of the repo and catch it
    monkeypatch.chdir(tmp_path)

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    tag = uuid.uuid4().hex[:8]
    exp_id = client.create_experiment(f"team-{tag}")

    def logged_run(weights: str) -> str:
        run = client.create_run(exp_id)
        rid = run.info.run_id
        client.log_param(rid, "lr", "0.001")
        for step, loss in enumerate([0.9, 0.5, 0.25]):
            client.log_metric(rid, "loss", loss, step=step)
        model = tmp_path / rid / "model"
        model.mkdir(parents=True)
        (model / "weights.txt").write_text(weights)
        client.log_artifacts(rid, str(model), artifact_path="model")
        client.set_terminated(rid)
        return rid

    run1, run2 = logged_run(f"weights-1-{tag}"), logged_run(f"weights-2-{tag}")

    # the run, read back through the server
    got = client.get_run(run1)
    assert got.data.params == {"lr": "0.001"}
    assert got.data.metrics["loss"] == 0.25
    assert [m.value for m in client.get_metric_history(run1, "loss")] == [0.9, 0.5, 0.25]
    assert got.info.status == "FINISHED"
    assert got.info.artifact_uri.startswith("mlflow-artifacts:")   # proxied through the server
    # the uploaded artifact landed in the server's artifacts destination, not anywhere client-side
    landed = [p for p in mlflow_server.artifacts.rglob("weights.txt") if run1 in p.parts]
    assert len(landed) == 1 and landed[0].read_text() == f"weights-1-{tag}"
    assert [f.path for f in client.list_artifacts(run1, "model")] == ["model/weights.txt"]

    # the registry: two versions from the runs' artifact paths, then aliases
    name = f"team-model-{tag}"
    client.create_registered_model(name)
    v1 = client.create_model_version(name, source=f"runs:/{run1}/model", run_id=run1)
    v2 = client.create_model_version(name, source=f"runs:/{run2}/model", run_id=run2)
    assert (v1.version, v2.version) == ("1", "2")
    client.set_registered_model_alias(name, "champion", v1.version)
    client.set_registered_model_alias(name, "challenger", v2.version)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert client.get_model_version_by_alias(name, "challenger").version == "2"
    # promotion: the challenger becomes champion
    client.set_registered_model_alias(name, "champion", v2.version)
    champion = client.get_model_version_by_alias(name, "champion")
    assert (champion.version, champion.run_id) == ("2", run2)
    assert set(client.get_registered_model(name).aliases) == {"champion", "challenger"}

    # the champion's files, downloaded through the server by alias. MLflow 3.17 resolves `models:/` URIs with
    # the *global* registry and tracking URIs even when download_artifacts gets tracking_uri=/registry_uri=
    # (ModelsArtifactRepository._get_model_uri_infos); left unset, it silently opens ./mlflow.db and finds no
    # such model. So set them, as a team's machine does with MLFLOW_TRACKING_URI (all undone after the test).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(mlflow_server))
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", str(mlflow_server))
    monkeypatch.setattr(registry_utils, "_registry_uri", str(mlflow_server))
    dst = tmp_path / "download"
    dst.mkdir()
    with _use_tracking_uri(str(mlflow_server)):
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@champion",
                                                         dst_path=str(dst), tracking_uri=mlflow_server,
                                                         registry_uri=mlflow_server))
    assert (local / "weights.txt").read_text() == f"weights-2-{tag}"
    assert not list(tmp_path.glob("*.db")) and not (tmp_path / "mlruns").exists()

    # and it is all in PostgreSQL
    assert _query(postgres, "mlflow", "SELECT name FROM experiments WHERE experiment_id = %s",
                  int(exp_id)) == [(f"team-{tag}",)]
    assert sorted(_query(postgres, "mlflow", "SELECT alias, version FROM registered_model_aliases WHERE name = %s",
                         name)) == [("challenger", 2), ("champion", 2)]


FLOW = """
import json
from prefect import flow, task

@task
def double(x):
    return 2 * x

@flow(name={name!r})
def answer():
    return double(21)

state = answer(return_state=True)
print(json.dumps({{"id": str(state.state_details.flow_run_id), "value": state.result(), "type": state.type.value}}))
"""


def test_prefect_server_on_postgres_records_a_flow_run(prefect_server: ServerURL, postgres, tmp_path):
    name = f"team-flow-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "prefect-home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    r = subprocess.run([sys.executable, "-c", FLOW.format(name=name)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["value"] == 42 and out["type"] == "COMPLETED"

    # the server recorded it: the flow run by id, and the flow by name
    run = httpx.get(f"{prefect_server}/flow_runs/{out['id']}", timeout=30)
    assert run.status_code == 200, run.text
    assert run.json()["state"]["type"] == "COMPLETED"
    flow = httpx.get(f"{prefect_server}/flows/name/{name}", timeout=30)
    assert flow.status_code == 200, flow.text
    assert run.json()["flow_id"] == flow.json()["id"]
    tasks = httpx.post(f"{prefect_server}/task_runs/filter", timeout=30,
                       json={"flow_runs": {"id": {"any_": [out["id"]]}}})
    assert tasks.status_code == 200, tasks.text
    assert [t["state"]["type"] for t in tasks.json()] == ["COMPLETED"]

    # in PostgreSQL, and no SQLite database was made in either PREFECT_HOME
    assert _query(postgres, "prefect", "SELECT state_type FROM flow_run WHERE id = %s",
                  out["id"]) == [("COMPLETED",)]
    assert not list(prefect_server.workdir.rglob("*.db")) and not list(tmp_path.rglob("*.db"))


def test_postgres_context_manager_stops_the_cluster_and_removes_it(postgres, tmp_path):
    # `postgres` only to skip with its reason where PostgreSQL cannot run
    with start_postgres(tmp_path) as pg:
        pg.create_database("scratch")
        assert _query(pg, "scratch", "SELECT current_database()") == [("scratch",)]
        pid = int((pg.root / "data" / "postmaster.pid").read_text().splitlines()[0])
        assert _alive(pid)
        root = pg.root
    assert not _alive(pid)
    assert not root.exists()
    assert (tmp_path / "postgres.log").is_file()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"   # a zombie has exited
