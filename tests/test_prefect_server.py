"""The local Prefect server that `dvdm pipeline` starts early: a real server subprocess, real flow runs on it,
a configured PREFECT_API_URL winning, and clear errors when the server cannot come up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FLOW_ON_LOCAL_SERVER = """
import json
from flows.prefect_server import prefect_api
warmed = []
with prefect_api([lambda: warmed.append("imports")]) as url:
    from prefect import flow, get_client, task

    @task
    def double(x):
        return 2 * x

    @flow(name="local-server-check")
    def check(n):
        return double(n)

    value = check(21)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    print(json.dumps({"url": url, "value": value, "runs": [r.name for r in runs],
                      "states": [r.state.type.value for r in runs], "warmed": warmed}))
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           **extra}
    env.pop("PREFECT_API_URL", None)
    return env


@pytest.mark.slow
def test_flow_runs_on_the_local_server_and_the_server_stops(tmp_path):
    r = subprocess.run([sys.executable, "-c", FLOW_ON_LOCAL_SERVER], capture_output=True, text=True, timeout=300,
                       env=_env(tmp_path), cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["url"].startswith("http://127.0.0.1:") and out["url"].endswith("/api")
    assert out["value"] == 42
    assert out["states"] == ["COMPLETED"]          # the run is recorded in the server this call started
    assert out["warmed"] in ([], ["imports"])      # warm-ups run only while the server is still booting
    assert (tmp_path / "prefect" / "prefect.db").is_file()
    # no server process survives the call
    left = subprocess.run(["pgrep", "-f", "flows.prefect_server:create_app"], capture_output=True, text=True)
    assert str(tmp_path) not in left.stdout


def test_configured_api_url_wins_and_nothing_starts(monkeypatch):
    import flows.prefect_server as prefect_server

    from prefect.settings import PREFECT_API_URL, temporary_settings

    def no_start(self):
        raise AssertionError("a local server was started although PREFECT_API_URL is set")

    monkeypatch.setattr(prefect_server.LocalPrefectServer, "start", no_start)
    warmed = []
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        with prefect_server.prefect_api([lambda: warmed.append(1)]) as url:
            assert url == "http://127.0.0.1:9/api"
    assert warmed == []                            # the body does its own imports; nothing to overlap


def test_warmups_stop_once_the_server_is_ready(monkeypatch):
    import flows.prefect_server as prefect_server

    monkeypatch.setattr(prefect_server, "configured_api_url", lambda: None)
    answers = iter([False, True])
    monkeypatch.setattr(prefect_server.LocalPrefectServer, "start", lambda self: (setattr(self, "port", 1), self)[1])
    monkeypatch.setattr(prefect_server.LocalPrefectServer, "ready", lambda self: next(answers, True))
    monkeypatch.setattr(prefect_server.LocalPrefectServer, "wait", lambda self: self.api_url)
    monkeypatch.setattr(prefect_server.LocalPrefectServer, "stop", lambda self: None)
    warmed: list[str] = []
    with prefect_server.prefect_api([lambda: warmed.append("a"), lambda: warmed.append("b")]) as url:
        from prefect.settings import PREFECT_API_URL

        assert url == "http://127.0.0.1:1/api" and PREFECT_API_URL.value() == url
    assert warmed == ["a"]


def test_server_that_cannot_start_is_a_clear_error(tmp_path):
    from flows.prefect_server import LocalPrefectServer, PrefectServerError

    old = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
    # a database in a folder that cannot exist: the server exits during start-up
    os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{tmp_path}/file/not-a-dir/p.db"
    (tmp_path / "file").write_text("a file, not a folder")
    server = LocalPrefectServer(startup_timeout=120)
    try:
        server.start()
        with pytest.raises(PrefectServerError, match="exited with status"):
            server.wait()
    finally:
        server.stop()
        if old is None:
            os.environ.pop("PREFECT_API_DATABASE_CONNECTION_URL")
        else:
            os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = old


def test_server_that_does_not_answer_in_time_is_a_clear_error(tmp_path, monkeypatch):
    from flows.prefect_server import LocalPrefectServer, PrefectServerError

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    server = LocalPrefectServer(startup_timeout=0.01).start()
    with pytest.raises(PrefectServerError, match="PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"):
        server.wait()
    assert server.process is None                   # the slow server was stopped, not left behind


@pytest.mark.slow
def test_a_port_taken_before_the_server_binds_it_is_retried(tmp_path, monkeypatch):
    import socket

    import flows.prefect_server as prefect_server

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    taken_port = taken.getsockname()[1]
    real_free_port = prefect_server._free_port
    ports = iter([taken_port])
    monkeypatch.setattr(prefect_server, "_free_port", lambda: next(ports, None) or real_free_port())
    server = prefect_server.LocalPrefectServer(startup_timeout=120)
    try:
        server.start()
        url = server.wait()
        assert server.port != taken_port and url.endswith(f":{server.port}/api")
    finally:
        server.stop()
        taken.close()


SERVER_IN_A_PARENT = """
import sys, time
from flows.prefect_server import LocalPrefectServer
server = LocalPrefectServer(startup_timeout=240).start()
if sys.argv[1] == "ready":
    server.wait()
print(server.process.pid, flush=True)
time.sleep(600)
"""


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) is gone as far as work goes
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("when", ["ready", "booting"])
def test_the_server_does_not_outlive_a_killed_parent(tmp_path, when):
    """kill -9 of the process that started the server (no atexit runs) still takes the server down, whether it
    was serving or still booting; it runs in its own process group."""
    import signal
    import time

    parent = subprocess.Popen([sys.executable, "-c", SERVER_IN_A_PARENT, when], stdout=subprocess.PIPE, text=True,
                              env=_env(tmp_path), cwd=REPO)
    server_pid = None
    try:
        server_pid = int(parent.stdout.readline())
        assert os.getpgid(server_pid) == server_pid != os.getpgid(parent.pid)  # its own process group
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60
        while _pid_exists(server_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _pid_exists(server_pid), f"the server (pid {server_pid}) outlived its killed parent"
    finally:
        parent.kill()
        if server_pid is not None and _pid_exists(server_pid):
            os.kill(server_pid, signal.SIGKILL)
