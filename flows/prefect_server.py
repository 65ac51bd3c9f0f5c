"""A local Prefect API for one CLI call, started early so its start-up overlaps useful work.

With no `PREFECT_API_URL` configured, Prefect starts a temporary server the first time a flow needs the API:
it first imports the whole server package into the calling process (~3 s on 2 cores) and then blocks until the
server answers (~3 s with an existing database, ~10 s when the SQLite database is created). `dvdm pipeline`
knows it will need the API, so it starts the same server (Prefect's own app, `create_app(ephemeral=True)`:
no UI, no background services, the database under `PREFECT_HOME`) in a subprocess right away, warms what
the flow needs anyway (imports, the MLflow store) while it boots, and only then waits for it.

A configured `PREFECT_API_URL` (environment or Prefect profile) always wins: nothing is started then.

The server never outlives the process that started it, even one killed with SIGKILL (no atexit then): it runs
in its own process group (a Ctrl-C in the terminal reaches only the parent, which stops it in order), and a
thread inside it watches its parent pid and shuts it down when the parent is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, Sequence

from dvdm.errors import DvdmError

STARTUP_FAILED_EXIT = 3  # uvicorn's exit status both for a taken port and for a failed app start-up
PORT_RETRIES = 5
PARENT_ENV = "DVDM_PREFECT_SERVER_PARENT"  # the pid the server must not outlive
PARENT_POLL_SECONDS = 0.5
SHUTDOWN_GRACE_SECONDS = 10.0


class PrefectServerError(DvdmError):
    """The local Prefect server did not come up."""


def create_app():
    """uvicorn factory for the subprocess: Prefect's API app in ephemeral mode (no UI, no services), shut down
    when the process that started it is gone."""
    from prefect.server.api.server import create_app as prefect_app

    if os.environ.get(PARENT_ENV, "").isdigit():
        watch_parent(int(os.environ[PARENT_ENV]))
    return prefect_app(ephemeral=True, final=True)


def watch_parent(parent: int) -> threading.Thread:
    """A daemon thread that ends this process once its parent is no longer `parent` (it died, and the process
    was re-parented): SIGTERM first (uvicorn's orderly shutdown), a hard exit if that hangs."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(SHUTDOWN_GRACE_SECONDS)
        os._exit(1)

    thread = threading.Thread(target=watch, name="dvdm-parent-watch", daemon=True)
    thread.start()
    return thread


def configured_api_url() -> str | None:
    """The API URL the user configured (environment or active Prefect profile), if any."""
    import prefect.settings

    return prefect.settings.get_current_settings().api.url or None


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalPrefectServer:
    """Prefect's API server in a subprocess on a free local port; `start` returns at once."""

    def __init__(self, startup_timeout: float | None = None):
        self.startup_timeout = startup_timeout or float(
            os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90"))
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._log = None
        self._ready = False
        self._port_retries = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "LocalPrefectServer":
        self.port = _free_port()
        if self._log is None:
            # the server's own messages go to a file, shown only when it fails to start
            self._log = tempfile.TemporaryFile(mode="w+b", prefix="dvdm-prefect-server-")
        self._log.seek(0)
        self._log.truncate()  # a retry on a new port reports only its own failure
        self.process = subprocess.Popen(
            # --app-dir: this module imports in the server even when the project runs from a source tree
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).resolve().parents[1]),
             "--factory", f"{__name__}:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", PARENT_ENV: str(os.getpid())}, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        if not self._port_retries:
            atexit.register(self.stop)  # an interrupted call never leaves a server behind
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def ready(self) -> bool:
        """Non-blocking: has the server answered its health check yet?"""
        if not self._ready and self.process is not None and self.process.poll() is None:
            self._ready = self._healthy()
        return self._ready

    def wait(self) -> str:
        """Block until the server answers; its API URL. Fails with the server's own output if it cannot start."""
        deadline = time.monotonic() + self.startup_timeout
        while not self.ready():
            code = self.process.poll() if self.process else None
            if (code == STARTUP_FAILED_EXIT and "address already in use" in self._text().lower()
                    and self._port_retries < PORT_RETRIES):
                self._port_retries += 1
                self.start()  # another program took the port in the meantime: try a new one
                continue
            if code is not None:
                output = self._output()
                self.stop()
                raise PrefectServerError(f"the local Prefect server exited with status {code} before it was "
                                         f"ready (set PREFECT_API_URL to use a running server instead):\n"
                                         f"{output}")
            if time.monotonic() > deadline:
                output = self._output()
                self.stop()
                raise PrefectServerError(
                    f"the local Prefect server did not answer within {self.startup_timeout:g}s (raise "
                    f"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or set PREFECT_API_URL to a running "
                    f"server){':' + chr(10) + output if output else ''}")
            time.sleep(0.05)
        return self.api_url

    def _text(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _output(self, lines: int = 6) -> str:
        """The server's last lines (where its exception is), not the whole traceback."""
        return "\n".join([line for line in self._text().splitlines() if line.strip()][-lines:])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        self._ready = False
        self._port_retries = 0


def flush_run_logs() -> None:
    """Send the run-log records still queued for the API (waits at most 5 s)."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()


@contextlib.contextmanager
def prefect_api(warmups: Sequence[Callable[[], object]] = ()) -> Iterator[str]:
    """Run the body against a Prefect API: the configured one, or a local server started here.

    `warmups` are work the body would do anyway (imports, opening stores); they run while the local server
    boots, each only if the server is not ready yet, so a fast start wastes nothing."""
    from flows.environment import configure, keep_user_errors_off_the_console

    configure()
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    keep_user_errors_off_the_console()

    # the heartbeat thread puts a 1 s floor under every flow run and matters only to a remote worker's
    # server-side crash detection; one local CLI call does not need it
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        configured = configured_api_url()
        if configured:
            yield configured
            return
        server = LocalPrefectServer().start()
        try:
            for warm in warmups:
                if server.ready():
                    break
                warm()
            url = server.wait()
            with temporary_settings({PREFECT_API_URL: url}):
                try:
                    yield url
                finally:
                    flush_run_logs()  # before the server goes: a failed run's last records are still queued
        finally:
            server.stop()
