"""Serving from the MLflow registry (a real SQLite store in a temp dir): `models:/dvdm@champion` and pinned
versions, hot swap on promotion under concurrent requests (none dropped, in-flight requests finish on the
old model), and a broken new version that is never swapped in.

Two versions are registered from the same tiny export (tests/test_serving_app.py builds it): the version
number and its metric tags tell them apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")
pytest.importorskip("python_multipart", reason="pip install python-multipart (FastAPI form uploads)")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from test_serving_app import build_tiny_export, http_post, post, read_frames, wait_ready  # noqa: E402

from dvdm.tracking import registry, runs  # noqa: E402
from dvdm.tracking.store import open_client  # noqa: E402
from serving.app import create_app  # noqa: E402
from serving.mlflow_model import register_export  # noqa: E402
from serving.server import running_server  # noqa: E402
from serving.settings import ServeSettings  # noqa: E402

NAME = "dvdm"
REPO = Path(__file__).resolve().parents[1]


def register(client, folder, key: str, fvd: float) -> str:
    run_id = runs.start_run(client, runs.experiment_name("serving-test"), f"serving-{key}")
    mv = register_export(client, run_id, folder, name=NAME, metrics={"fvd": fvd}, alias=None)
    runs.end_run(client, run_id)
    return str(mv.version)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, client) of a fresh store holding versions 1 (fvd 100) and 2 (fvd 90) of `dvdm`."""
    export = build_tiny_export(tmp_path_factory)
    root = tmp_path_factory.mktemp("serving-registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_client(uri)
    assert register(client, export, "a", 100.0) == "1"
    assert register(client, export, "b", 90.0) == "2"
    registry.set_alias(client, registry.CHAMPION, "1", NAME)
    return uri, client


def settings(uri: str, **changes) -> ServeSettings:
    return ServeSettings(**{"provider": "cpu", "threads": 1, "tracking_uri": uri, "poll_interval": 0, **changes})


def test_champion_pinned_and_missing_alias(store):
    uri, client = store
    registry.set_alias(client, registry.CHAMPION, "1", NAME)
    app = create_app("models:/dvdm@champion", settings=settings(uri))
    with TestClient(app) as c:
        wait_ready(c)
        m = c.get("/v1/model").json()
        assert (m["name"], m["version"], m["alias"], m["label"]) == ("dvdm", "1", "champion", "1")
        assert m["metrics"] == {"fvd": 100.0} and m["source"].startswith("file://")
        assert m["provider"] == "CPUExecutionProvider" and m["manifest"]["space"] == "rgb"
        assert m["follow"]["follows_alias"] is True and m["follow"]["poll_interval"] is None  # polling off
        r = post(c)
        assert r.status_code == 200
        assert (r.headers["x-model-version"], r.headers["x-model-name"], r.headers["x-model-alias"]) == \
            ("1", "dvdm", "champion")
        folder = app.state.manager.current.folder
        assert (folder / "manifest.json").is_file() and (folder / "model_version.json").is_file()
    assert not folder.exists(), "the downloaded version is removed at shutdown"

    with TestClient(create_app("models:/dvdm/2", settings=settings(uri))) as c:
        wait_ready(c)
        m = c.get("/v1/model").json()
        assert (m["version"], m["alias"], m["metrics"]) == ("2", None, {"fvd": 90.0})
        assert "x-model-alias" not in post(c).headers

    with TestClient(create_app("models:/dvdm@nope", settings=settings(uri))) as c:
        deadline = time.monotonic() + 30
        while "no alias 'nope'" not in (r := c.get("/readyz")).text:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.status_code == 503 and c.get("/healthz").status_code == 200
        assert post(c).status_code == 503


class HoldFirst:
    """Wraps a pipeline's generate so that its first call blocks until released (later calls pass)."""

    def __init__(self, pipe):
        self.entered, self.release = threading.Event(), threading.Event()
        original, lock, state = pipe.generate, threading.Lock(), {"first": True}

        def generate(*args, **kwargs):
            with lock:
                first, state["first"] = state["first"], False
            if first:
                self.entered.set()
                assert self.release.wait(60), "never released"
            return original(*args, **kwargs)

        pipe.generate = generate


def test_hot_swap_under_concurrent_requests(store):
    uri, client = store
    registry.set_alias(client, registry.CHAMPION, "1", NAME)
    app = create_app("models:/dvdm@champion",
                     settings=settings(uri, poll_interval=0.2, max_concurrency=2, max_queue=32))
    with running_server(app) as url:
        old = app.state.manager.current
        assert old.version == "1"
        hold = HoldFirst(old.pipeline)
        held: dict[str, httpx.Response] = {}
        held_thread = threading.Thread(target=lambda: held.setdefault("r", http_post(url, seed=7)))
        held_thread.start()
        assert hold.entered.wait(30)  # one request is inside the v1 pipeline and stays there during the swap

        stop = threading.Event()
        seen: list[list[tuple[int, str | None]]] = [[] for _ in range(3)]

        def worker(log):
            while not stop.is_set():
                r = http_post(url)
                log.append((r.status_code, r.headers.get("x-model-version")))

        workers = [threading.Thread(target=worker, args=(log,)) for log in seen]
        for t in workers:
            t.start()
        deadline = time.monotonic() + 60
        while not all(seen):
            assert time.monotonic() < deadline
            time.sleep(0.02)

        registry.set_alias(client, registry.CHAMPION, "2", NAME)  # the promotion
        while httpx.get(f"{url}/v1/model", timeout=10).json()["version"] != "2":
            assert time.monotonic() < deadline, "the new champion was not swapped in"
            time.sleep(0.05)
        while not all(sum(v == "2" for _, v in log) >= 2 for log in seen):  # load continues on v2
            assert time.monotonic() < deadline
            time.sleep(0.02)
        while old.folder.exists():  # the old version's download is removed after the swap
            assert time.monotonic() < deadline, "the old version's folder was not removed"
            time.sleep(0.02)

        hold.release.set()  # the request that started on v1 finishes on v1
        held_thread.join(60)
        stop.set()
        for t in workers:
            t.join(60)
        r = held["r"]
        assert r.status_code == 200 and r.headers["x-model-version"] == "1" and r.headers["x-seed"] == "7"
        assert read_frames(r.content, "mp4").shape == (4, 16, 16, 3)

        for log in seen:
            assert all(status == 200 for status, _ in log), log  # no dropped or failed request
            versions = [v for _, v in log]
            assert set(versions) <= {"1", "2"} and versions == sorted(versions), versions  # 1...1 then 2...2
        m = httpx.get(f"{url}/v1/model", timeout=10).json()
        assert (m["version"], m["metrics"], m["follow"]["swaps"], m["follow"]["last_error"]) == \
            ("2", {"fvd": 90.0}, 1, None)
        assert app.state.manager.current.pipeline is not old.pipeline
        assert httpx.get(f"{url}/readyz", timeout=10).json()["version"] == "2"


def test_a_broken_new_version_is_not_swapped_in(store, tmp_path_factory):
    uri, client = store
    registry.set_alias(client, registry.CHAMPION, "2", NAME)
    # registration refuses a corrupt export (sha256), so the version's stored copy is corrupted afterwards
    from mlflow.utils.file_utils import local_file_uri_to_path

    bad = register(client, build_tiny_export(tmp_path_factory), "broken", 80.0)
    stored = Path(local_file_uri_to_path(client.get_model_version(NAME, bad).source)) / "data/export/denoiser.onnx"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    app = create_app("models:/dvdm@champion", settings=settings(uri))
    manager = app.state.manager
    with TestClient(app) as c:
        wait_ready(c)
        assert manager.current.version == "2"
        registry.set_alias(client, registry.CHAMPION, bad, NAME)
        assert manager.refresh() is False  # refused: sha256 mismatch
        assert "sha256" in manager.last_error and "refusing" in manager.last_error
        m = c.get("/v1/model").json()
        assert m["version"] == "2" and "sha256" in m["follow"]["last_error"]
        assert c.get("/readyz").status_code == 200 and post(c).headers["x-model-version"] == "2"
        assert [p.name for p in manager._cache.iterdir()] == [manager.current.folder.name]  # no leftovers
        registry.set_alias(client, registry.CHAMPION, "1", NAME)  # a rollback is just another alias move
        assert manager.refresh() is True and manager.current.version == "1" and manager.last_error is None
        assert manager.refresh() is False  # unchanged alias: nothing to do
        assert post(c).headers["x-model-version"] == "1"


def test_registry_serving_process_never_imports_torch(store):
    """A fresh process follows models:/dvdm@champion over real HTTP (open_client, download_version, ORT,
    video encoding) without importing torch."""
    uri, client = store
    registry.set_alias(client, registry.CHAMPION, "2", NAME)
    code = f"""
import io, json, sys
import httpx, numpy as np
from PIL import Image
from serving.server import running_server
from serving.settings import ServeSettings
buf = io.BytesIO(); Image.fromarray(np.full((20, 20, 3), 60, np.uint8)).save(buf, "PNG")
settings = ServeSettings(provider="cpu", threads=1, tracking_uri={uri!r}, poll_interval=0.5)
with running_server("models:/dvdm@champion", settings=settings) as url:
    r = httpx.post(url + "/v1/generate", files={{"image": ("a.png", buf.getvalue(), "image/png")}},
                   data={{"prompt": "x", "steps": "1", "format": "gif"}}, timeout=60)
    m = httpx.get(url + "/v1/model", timeout=30).json()
out = {{"status": r.status_code, "version": r.headers.get("x-model-version"), "model": m["version"],
       "torch": sorted(k for k in sys.modules if k == "torch" or k.startswith("torch."))}}
print(json.dumps(out))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"status": 200, "version": "2", "model": "2", "torch": []}, out
