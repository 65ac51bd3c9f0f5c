"""Where runs and models are stored, and the client every other module takes.

Embedded default (zero setup): a SQLite file plus a local artifact folder inside the project's work dir,
`<work>/mlflow/mlflow.db` and `<work>/mlflow/artifacts`; the work dir is `$DVDM_WORK_DIR` or `./work`.
An explicit setting (a CLI option, a flow parameter) wins, then `MLFLOW_TRACKING_URI`, so the same code
points at a tracking server (PostgreSQL + object store) without changes.

Left alone, MLflow 3 creates `mlflow.db` in the current directory and, for a SQLite store, puts artifacts
in `./mlruns`; every client and experiment here is therefore created with an explicit URI and location.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from dvdm.tracking.errors import TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient

WORK_DIR_ENV = "DVDM_WORK_DIR"
DEFAULT_WORK_DIR = "work"

# setdefault: a user's own settings win. Telemetry would phone home; the INFO lines ("Creating initial
# MLflow database tables...") and download progress bars are noise in stage logs.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def work_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The project's work dir (absolute): `path`, else `$DVDM_WORK_DIR`, else `./work`."""
    chosen = path or os.environ.get(WORK_DIR_ENV) or DEFAULT_WORK_DIR
    return Path(chosen).expanduser().resolve()


def project_work_dir(project: str | os.PathLike[str]) -> Path:
    """The work dir of the project at `project`: `$DVDM_WORK_DIR` when set, else `project/work`."""
    return work_dir(os.environ.get(WORK_DIR_ENV) or Path(project) / DEFAULT_WORK_DIR)


def embedded_uri(work: str | os.PathLike[str] | None = None) -> str:
    """The embedded store's URI: `sqlite:////abs/work/mlflow/mlflow.db`."""
    return f"sqlite:///{work_dir(work) / 'mlflow' / 'mlflow.db'}"


def resolve_tracking_uri(uri: str | None = None, work: str | os.PathLike[str] | None = None) -> str:
    """`uri` (a URI, or a path to a `.db` file), else `$MLFLOW_TRACKING_URI`, else the embedded store."""
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not chosen:
        return embedded_uri(work)
    if "://" not in chosen and chosen != "databricks" and not chosen.startswith("databricks:"):
        path = Path(chosen).expanduser().resolve()
        if path.suffix != ".db":
            raise TrackingError(f"tracking URI {chosen!r}: give a URI (sqlite:///..., http://...) or a path "
                                "to a .db file")
        return f"sqlite:///{path}"
    return chosen


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (absolute), None for any other store.

    SQLAlchemy's form is `sqlite:///relative.db` or `sqlite:////abs/path.db`; `urlparse` would keep the
    extra slash (`//abs/...`, a different path to pathlib), so the prefix is cut by hand.
    """
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    path = unquote(uri[len(prefix):].split("?", 1)[0])
    if not path or path == ":memory:":
        return None
    return Path(path).resolve()


def artifact_root(uri: str) -> Path | None:
    """Local artifact folder for a SQLite store (beside the database); None where the server decides."""
    db = sqlite_path(uri)
    return db.parent / "artifacts" if db is not None else None


def quiet_mlflow() -> None:
    """Turn off telemetry, INFO chatter and progress bars (before or after MLflow is imported)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    level = logging.getLevelName(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    level = level if isinstance(level, int) else logging.WARNING
    if "mlflow" in sys.modules:  # MLflow reads the env level once, when it is imported
        logging.getLogger("mlflow").setLevel(level)
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))  # schema migrations


def open_client(uri: str | None = None, work: str | os.PathLike[str] | None = None) -> "MlflowClient":
    """An `MlflowClient` bound to the resolved store (tracking and registry alike); creates local folders.

    The registry follows the tracking URI unless `$MLFLOW_REGISTRY_URI` is set and no explicit `uri` was
    given; nothing here sets MLflow's process-global URI, so two clients on two stores never interfere.
    """
    quiet_mlflow()
    from mlflow import MlflowClient

    tracking = resolve_tracking_uri(uri, work)
    db = sqlite_path(tracking)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        artifact_root(tracking).mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
    registry = tracking if uri else os.environ.get("MLFLOW_REGISTRY_URI") or tracking
    try:
        return MlflowClient(tracking_uri=tracking, registry_uri=registry)
    except Exception as exc:  # a malformed URI or an unreachable database: say which store
        raise TrackingError(f"cannot open the MLflow store {tracking}: {exc}") from exc


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"


def ensure_experiment(client: "MlflowClient", name: str, artifact_location: str | None = None) -> str:
    """The id of experiment `name`, created if missing (restored if it was deleted).

    On a SQLite store the artifact location is `<artifact root>/<name>`; without it MLflow would write
    artifacts into `./mlruns` of whatever directory the process runs in.
    """
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        if artifact_location is None:
            root = artifact_root(client.tracking_uri)
            artifact_location = (root / _slug(name)).as_uri() if root is not None else None
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:  # created meanwhile by another process or task
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise TrackingError(f"cannot create MLflow experiment {name!r}: {exc.message}") from exc
    if exp.lifecycle_stage == "deleted":  # a deleted experiment still owns its name
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id
