"""Process settings every flow needs before Prefect, MLflow or DVC is imported, and where a run's output goes.

The embedded defaults must work with zero setup and stay quiet offline: Prefect's telemetry prints
tracebacks when it cannot phone home, DVC and MLflow would try to send analytics, library progress bars would
print over dvdm's own. A user's own settings always win (`setdefault`): `PREFECT_API_URL` points flows at a
Prefect server, `MLFLOW_TRACKING_URI` at a tracking server.

Prefect logs at its default level (INFO), so a run's log in the Prefect UI holds its INFO records, its prints
(`log_prints=True`) and, while a flow runs, dvdm's own records and progress lines (`library_logs_in_run_log`).
What reaches the terminal is chosen by its handlers: the `dvdm` CLI's shows warnings and errors, and dvdm's
progress writes its bars and lines there itself (`dvdm.utils.progress`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

from dvdm.utils.progress import LOGGER_NAME as PROGRESS_LOGGER
from dvdm.utils.progress import quiet_third_party_bars

QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # a fresh temporary server needs ~8 s to migrate its SQLite DB on a loaded 2-core machine
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}


def configure() -> None:
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    quiet_third_party_bars()


def _in_a_run(record: logging.LogRecord) -> bool:
    """Prefect's API handler can place a record only inside a flow or task run (e.g. not one from a thread
    a stage started); the rest stays off the run log, instead of becoming a warning."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


@contextlib.contextmanager
def library_logs_in_run_log() -> Iterator[None]:
    """While the body runs (a flow's), dvdm's INFO records go to the run's log in the Prefect API, which the UI
    shows: what its modules log and the progress lines of training, evaluation and export
    (`dvdm.utils.progress`). Progress is on the terminal already (a bar or lines, written there directly), so
    its records skip the console handlers; dvdm's other records reach them as before."""
    from prefect.logging.handlers import APILogHandler

    library, progress = logging.getLogger("dvdm"), logging.getLogger(PROGRESS_LOGGER)
    handler = APILogHandler()
    handler.addFilter(_in_a_run)
    saved = library.level, progress.propagate
    library.setLevel(logging.INFO)
    library.addHandler(handler)
    progress.addHandler(handler)
    progress.propagate = False
    try:
        yield
    finally:
        library.removeHandler(handler)
        progress.removeHandler(handler)
        library.setLevel(saved[0])
        progress.propagate = saved[1]


class UserErrorsOffTheConsole(logging.Filter):
    """Keeps Prefect's failure records about a `DvdmError` (bad input, a full disk) off the console: the CLI
    prints that error as its one `error:` line, and the run's log in the Prefect API keeps the records.

    The record that carries the error comes first; the run's later error records (its "Finished in state
    Failed" line) carry only its run id, so the ids of such runs are remembered."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_runs: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        from dvdm.errors import DvdmError

        run = getattr(record, "task_run_id", None) or getattr(record, "flow_run_id", None)
        if record.exc_info and isinstance(record.exc_info[1], DvdmError):
            if run:
                self.failed_runs.add(str(run))
            return False
        return not (run and record.levelno >= logging.ERROR and str(run) in self.failed_runs)


def keep_user_errors_off_the_console() -> None:
    """Install `UserErrorsOffTheConsole` on the console handlers Prefect's run logs reach: Prefect's own, or
    the CLI's root handler, which Prefect leaves in place (after Prefect set up its logging)."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # later set-ups are incremental: they keep these handlers and their filters
    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not any(
                    isinstance(f, UserErrorsOffTheConsole) for f in handler.filters):
                handler.addFilter(UserErrorsOffTheConsole())


PROJECT_ENV = "DVDM_PROJECT_DIR"


def project_dir(project: str | None) -> Path:
    """The project a flow run works on, resolved where the run executes (a worker): the `project` parameter,
    else `$DVDM_PROJECT_DIR` in that process's environment, else its working directory."""
    return Path(project or os.environ.get(PROJECT_ENV) or ".").resolve()


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Stage commands use paths relative to the project root, as `dvc repro` runs them."""
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
