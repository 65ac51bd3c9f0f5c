"""Process settings every flow needs before Prefect, MLflow or DVC is imported.

The embedded defaults must work with zero setup and stay quiet offline: Prefect's telemetry prints
tracebacks when it cannot phone home, DVC and MLflow would try to send analytics. A user's own settings
always win (`setdefault`): `PREFECT_API_URL` points flows at a Prefect server, `MLFLOW_TRACKING_URI` at a
tracking server.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    # a fresh temporary server needs ~8 s to migrate its SQLite DB on a loaded 2-core machine
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}


def configure() -> None:
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Stage commands use paths relative to the project root, as `dvc repro` runs them."""
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)
