"""Real team-scale servers for integration tests: a throw-away PostgreSQL cluster, an MLflow tracking server
with its backend store in that PostgreSQL and proxied artifact serving, and a Prefect server whose database is
that PostgreSQL too.

A team does not share a SQLite file: it runs one MLflow server and one Prefect server on a real database, and
every machine talks to them over HTTP. These helpers start exactly that, as real processes on free ports of
127.0.0.1 (nothing is mocked), so a test can run the pipeline the way a team would and find out what breaks
with concurrent clients, server-side migrations, proxied artifacts and a PostgreSQL dialect.

- `start_postgres(workdir)`: `initdb` + `pg_ctl start` (trust auth, TCP on 127.0.0.1, unix socket in the
  cluster's temp dir). As root, PostgreSQL refuses to run, so its commands run as the `postgres` system user
  and the cluster lives in its own temp dir owned by that user. Yields a `Postgres` (`.url(db, driver)`,
  `.create_database(name)`); stopped with `pg_ctl stop -m immediate` and deleted at exit.
- `start_mlflow_server(pg, workdir)`: `mlflow server` on database "mlflow", artifacts served from
  `workdir/artifacts`, one worker. Yields the tracking URI `http://127.0.0.1:PORT` (a `ServerURL`: a str
  that also carries `.artifacts`, `.log`, `.workdir`).
- `start_prefect_server(pg, workdir)`: `prefect server start` on database "prefect" (asyncpg), UI and
  analytics off, PREFECT_HOME in `workdir/prefect-home`. Yields the API URL `http://127.0.0.1:PORT/api`
  (a `ServerURL`).

Servers run in their own process group, which is terminated (then killed) at exit, also when a test fails.
Session-scoped pytest fixtures `postgres`, `mlflow_server` and `prefect_server` wrap them; a test module uses
them with `from team_servers import postgres, mlflow_server, prefect_server  # noqa: F401` (tests/ is on
sys.path, like `tiny_project`). pytest keys a fixture by the module it is found in, so each test module that
imports them starts its own set, once; importing them into tests/conftest.py instead would share one set
across the whole session. They skip with a reason when PostgreSQL's binaries are not installed (CI
installs Debian's `postgresql` package) or when running as root without a `postgres` user.

A client gotcha (MLflow 3.17): `models:/name@alias` URIs are resolved with the *global* tracking/registry
URI even when `mlflow.artifacts.download_artifacts` is given tracking_uri=/registry_uri=; unset, it silently
opens ./mlflow.db. Point MLFLOW_TRACKING_URI (or mlflow.set_tracking_uri) at the server in such code.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = float(os.environ.get("DVDM_TEAM_SERVER_TIMEOUT", "240"))


# --------------------------------------------------------------------------------------------- helpers


class ServerURL(str):
    """A server's URL (a plain `str`, so it goes wherever a URL goes) that also knows the server's `workdir`,
    its `log` file and, for MLflow, the `artifacts` folder that its proxied artifact store writes to."""

    workdir: Path
    log: Path
    artifacts: Path | None

    def __new__(cls, url: str, workdir: Path, log: Path, artifacts: Path | None = None) -> "ServerURL":
        self = super().__new__(cls, url)
        self.workdir, self.log, self.artifacts = workdir, log, artifacts
        return self


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError as e:
        return f"<no log at {path}: {e}>"


def _stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Terminate the process group `proc` leads (it was started with start_new_session), then kill it."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; make sure no child it left in its group survives it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _wait_http(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = START_TIMEOUT_S) -> float:
    """Poll `url` until it answers 200; raise with the server's log tail when it exits or `timeout` passes.
    Returns the seconds it took."""
    import httpx

    start = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before answering {url}; "
                               f"log tail ({log}):\n{_tail(log)}")
        try:
            r = httpx.get(url, timeout=5.0)
            if r.status_code == 200:
                return time.monotonic() - start
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(0.5)
    raise TimeoutError(f"{what} did not answer {url} within {timeout:.0f}s (last: {last}); "
                       f"log tail ({log}):\n{_tail(log)}")


def _script(name: str) -> list[str]:
    """The console script `name` of this interpreter's environment (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file():
        return [str(here)]
    found = shutil.which(name)
    if found:
        return [found]
    raise FileNotFoundError(f"{name!r} not found next to {sys.executable} or on PATH")


# --------------------------------------------------------------------------------------------- PostgreSQL


def postgres_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: on PATH, else the newest /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    candidates = [Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin") if (Path(p) / "initdb").is_file()]
    candidates.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else -1)
    return candidates[-1] if candidates else None


def postgres_unavailable() -> str | None:
    """Why a throw-away PostgreSQL cannot be started here, or None when it can."""
    bindir = postgres_bindir()
    if bindir is None:
        return ("PostgreSQL binaries (initdb, pg_ctl) not found on PATH or under /usr/lib/postgresql/*/bin: "
                "install Debian's `postgresql` package to run the team-server tests")
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (bindir / tool).is_file():
            return f"PostgreSQL's {tool} is missing from {bindir}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return ("running as root and there is no `postgres` system user to run PostgreSQL as "
                    "(initdb and postgres refuse to run as root)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[postgres]')"
    return None


@dataclass
class Postgres:
    """A running throw-away PostgreSQL cluster with trust auth on 127.0.0.1:`port`."""

    host: str
    port: int
    user: str
    root: Path          # the cluster's temp dir: data/, socket/, postgres.log

    def url(self, db: str, driver: str = "postgresql") -> str:
        """SQLAlchemy-style URL of database `db`, e.g. postgresql://postgres@127.0.0.1:5433/mlflow or, with
        driver="postgresql+asyncpg", the one Prefect's server wants."""
        return f"{driver}://{self.user}@{self.host}:{self.port}/{db}"

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name` (no-op when it exists)."""
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"


@contextlib.contextmanager
def start_postgres(workdir: Path) -> Iterator[Postgres]:
    """Start a throw-away PostgreSQL cluster; yield a `Postgres`; stop it and delete it at exit.

    As root the cluster lives in a fresh temp dir of the system's temp folder owned by the `postgres` user
    (that user may not be able to traverse `workdir`, e.g. pytest's 0700 /tmp/pytest-of-root); otherwise in
    a temp dir inside `workdir`. Raises RuntimeError with the reason when PostgreSQL is unavailable."""
    reason = postgres_unavailable()
    if reason:
        raise RuntimeError(reason)
    bindir = postgres_bindir()
    assert bindir is not None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    as_root = os.geteuid() == 0
    run_as: dict = {}
    if as_root:
        pw = pwd.getpwnam("postgres")
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        root = Path(tempfile.mkdtemp(prefix="dvdm-pg-"))
        os.chown(root, pw.pw_uid, pw.pw_gid)
        env = {**os.environ, "HOME": str(root), "USER": "postgres", "LOGNAME": "postgres"}
    else:
        root = Path(tempfile.mkdtemp(prefix="pg-", dir=workdir))
        env = dict(os.environ)
    for var in ("PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
        env.pop(var, None)
    data, sock, log = root / "data", root / "socket", root / "postgres.log"

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(bindir / args[0]), *args[1:]], cwd=root, env=env, capture_output=True,
                              text=True, timeout=timeout, **run_as)

    def mkdir(path: Path) -> None:
        path.mkdir(mode=0o700)
        if as_root:
            os.chown(path, run_as["user"], run_as["group"])

    pg = None
    started = False
    try:
        mkdir(sock)
        r = run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-locale",
                "--no-sync")
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        for attempt in range(3):
            port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off "
                       "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200")
            r = run("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "120", "-o", options, "start",
                    timeout=180)
            if r.returncode == 0:
                started = True
                break
            if attempt == 2 or "could not bind" not in _tail(log):
                raise RuntimeError(f"pg_ctl start failed ({r.returncode}):\n{r.stdout[-2000:]}\n"
                                   f"{r.stderr[-2000:]}\nlog tail ({log}):\n{_tail(log)}")
        pg = Postgres(host="127.0.0.1", port=port, user="postgres", root=root)
        yield pg
    finally:
        if started:
            r = run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "-t", "60", "stop", timeout=90)
            if r.returncode != 0:  # last resort: kill the postmaster, whose pid heads postmaster.pid
                with contextlib.suppress(OSError, ValueError, IndexError):
                    os.kill(int((data / "postmaster.pid").read_text().splitlines()[0]), signal.SIGKILL)
        if pg is not None and log.is_file():  # keep the log beside the test's other outputs
            with contextlib.suppress(OSError):
                shutil.copy(log, workdir / "postgres.log")
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------- MLflow


@contextlib.contextmanager
def start_mlflow_server(pg: Postgres, workdir: Path) -> Iterator[ServerURL]:
    """Start `mlflow server` with its backend store in database "mlflow" of `pg` and artifacts served (proxied)
    from `workdir/artifacts`; yield its tracking URI `http://127.0.0.1:PORT`; stop its process group at exit."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pg.create_database("mlflow")
    artifacts = workdir / "artifacts"
    artifacts.mkdir(exist_ok=True)
    port = free_port()
    log = workdir / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(var, None)
    cmd = [*_script("mlflow"), "server", "--backend-store-uri", pg.url("mlflow"), "--serve-artifacts",
           "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        uri = ServerURL(f"http://127.0.0.1:{port}", workdir, log, artifacts)
        _wait_http(f"{uri}/health", proc, log, "mlflow server")
        yield uri
    finally:
        _stop_group(proc)


# --------------------------------------------------------------------------------------------- Prefect


@contextlib.contextmanager
def start_prefect_server(pg: Postgres, workdir: Path) -> Iterator[ServerURL]:
    """Start `prefect server start` on database "prefect" of `pg` (asyncpg); yield its API URL
    `http://127.0.0.1:PORT/api`; stop its process group at exit."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pg.create_database("prefect")
    port = free_port()
    log = workdir / "prefect-server.log"
    home = workdir / "prefect-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": pg.url("prefect", driver="postgresql+asyncpg"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    })
    cmd = [*_script("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui",
           "--analytics-off", "--workers", "1"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        api = ServerURL(f"http://127.0.0.1:{port}/api", workdir, log)
        _wait_http(f"{api}/health", proc, log, "prefect server")
        yield api
    finally:
        _stop_group(proc)


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster for the session (skips with the reason when it cannot run here)."""
    reason = postgres_unavailable()
    if reason:
        pytest.skip(reason)
    with start_postgres(tmp_path_factory.mktemp("postgres")) as pg:
        yield pg


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory) -> Iterator[ServerURL]:
    """Tracking URI `http://127.0.0.1:PORT` of a real MLflow server on `postgres` (a `ServerURL`: its
    `.artifacts` is the folder the server's proxied artifact store writes to, `.log` its log)."""
    with start_mlflow_server(postgres, tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="session")
def prefect_server(postgres, tmp_path_factory) -> Iterator[ServerURL]:
    """API URL `http://127.0.0.1:PORT/api` of a real Prefect server on `postgres` (a `ServerURL`)."""
    with start_prefect_server(postgres, tmp_path_factory.mktemp("prefect-server")) as api:
        yield api
