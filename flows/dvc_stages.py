"""The DVC side of a flow: a stage's declared outputs, which stages are up to date, recording the lock.

A Prefect task runs a stage's function as `dvc repro` runs its `cmd` (the `dvdm` command calls the same
function, see `dvdm.stages.registry`), but in-process, so a flow pays no interpreter + torch start-up per
stage; afterwards `dvc commit` records the stage in `dvc.lock` and the cache, so a later `dvc repro` (or a
rerun of the flow) skips it.

DVC holds a repository lock and fails when two commands overlap, so every DVC call here goes through one
process-wide lock plus an advisory file lock (`.dvc/tmp/dvdm-flow.lock`) that serialises flows in
different processes too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from dvdm.errors import ConfigError

_THREAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class Stage:
    """One `dvc.yaml` stage: its declared outputs, metrics, params sections and dependencies (paths relative to
    the project)."""

    name: str
    outs: tuple[str, ...]
    metrics: tuple[str, ...]
    params: tuple[str, ...]
    deps: tuple[str, ...] = ()
    uncached: tuple[str, ...] = ()  # outs and metrics kept in git, not in the DVC cache (`cache: false`)


def _uncached(entries: list[Any]) -> tuple[str, ...]:
    return tuple(str(name) for e in entries or [] if isinstance(e, dict)
                 for name, flags in e.items() if isinstance(flags, dict) and flags.get("cache") is False)


def _names(entries: list[Any]) -> tuple[str, ...]:
    out = []
    for e in entries or []:
        out.extend(e.keys() if isinstance(e, dict) else [e])
    return tuple(str(x) for x in out)


def read_stages(project: Path) -> dict[str, Stage]:
    """The stages of `project/dvc.yaml`, in file order (which is pipeline order)."""
    path = Path(project) / "dvc.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not found; run the pipeline from the project root (where dvc.yaml is) "
                          "or pass --project")
    doc = yaml.safe_load(path.read_text()) or {}
    stages = {}
    for name, body in (doc.get("stages") or {}).items():
        stages[name] = Stage(name, _names(body.get("outs")), _names(body.get("metrics")), _names(body.get("params")),
                             _names(body.get("deps")), _uncached(body.get("outs")) + _uncached(body.get("metrics")))
    return stages


@contextlib.contextmanager
def dvc_lock(project: Path) -> Iterator[None]:
    """Serialise DVC calls on one repository (threads of this process and other processes), run from its
    root: DVC resolves output paths against the working directory."""
    from flows.environment import working_directory

    lock_dir = Path(project) / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, open(lock_dir / "dvdm-flow.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            with working_directory(Path(project)):
                yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_dvc_project(project: Path) -> bool:
    return (Path(project) / ".dvc").is_dir()


def _repo(project: Path):
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    import logging

    from dvc.repo import Repo

    # DVC's INFO lines ("Updating lock file") would print twice: once by DVC, once through Prefect's handler
    logging.getLogger("dvc").setLevel(logging.WARNING)
    # nor DVC's progress bars (hashing, committing, checking out), which flash between dvdm's own on a terminal:
    # DVC draws them only while these loggers let ERROR records through
    for bars in ("dvc.progress", "dvc_data.callbacks"):
        logging.getLogger(bars).setLevel(logging.CRITICAL)

    return Repo(str(project))


def stage_up_to_date(project: Path, stage: Stage) -> bool:
    """True when `dvc status` reports nothing for the stage and its outputs exist in the workspace."""
    if not is_dvc_project(project):
        return False
    if not all((Path(project) / o).exists() for o in stage.outs):
        return False
    with dvc_lock(project), _repo(project) as repo:
        return not repo.status(targets=[stage.name])


def commit_stage(project: Path, stage: Stage) -> None:
    """Record a stage that just ran in dvc.lock and the DVC cache (what `dvc repro` does after a command)."""
    if not is_dvc_project(project):
        return
    with dvc_lock(project), _repo(project) as repo:
        repo.commit(stage.name, force=True)
        # `dvc repro` also keeps cached outputs out of git (.gitignore next to them); commit alone does not
        for s in repo.stage.collect(stage.name):
            with repo.scm_context:
                s.ignore_outs()


def _read_lock(project: Path) -> dict[str, Any]:
    """The project's dvc.lock as a dict ({} when there is none yet)."""
    lock = Path(project) / "dvc.lock"
    return (yaml.safe_load(lock.read_text()) or {}) if lock.is_file() else {}


def data_hash(project: Path, stage_name: str = "ingest") -> str | None:
    """The DVC hash of a stage's first output as recorded in dvc.lock (the data version a model saw)."""
    outs = (lock_entries(project).get(stage_name) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None


# ------------------------------------------------------------------------------------ a shared remote


def lock_entries(project: Path) -> dict[str, Any]:
    """The `stages` of the project's dvc.lock (what DVC recorded each stage ran with and produced)."""
    return dict(_read_lock(project).get("stages") or {})


def write_lock_entries(project: Path, entries: dict[str, Any]) -> None:
    """Merge `entries` into the project's dvc.lock (the stages another machine ran)."""
    from dvdm.utils.atomic import write_text

    doc = _read_lock(project)
    doc.setdefault("schema", "2.0")
    doc["stages"] = {**(doc.get("stages") or {}), **entries}
    write_text(Path(project) / "dvc.lock", yaml.safe_dump(doc, sort_keys=False))


def use_remote(project: Path, url: str, name: str = "shared") -> None:
    """Make `url` the project's default DVC remote, in the untracked local config (`dvc remote add --local -d`)."""
    with dvc_lock(project), _repo(project) as repo:
        with repo.config.edit("local") as conf:
            conf["remote"][name] = {"url": url}
            conf["core"]["remote"] = name


def pull_outputs(project: Path, stage_names: list[str], allow_missing: bool = False) -> None:
    """Fetch the cached outputs of `stage_names` (as dvc.lock records them) from the default remote."""
    if not stage_names:
        return
    with dvc_lock(project), _repo(project) as repo:
        repo.pull(targets=list(stage_names), allow_missing=allow_missing)


def push_outputs(project: Path, stage_name: str) -> None:
    """Send a stage's cached outputs to the default remote."""
    with dvc_lock(project), _repo(project) as repo:
        repo.push(targets=[stage_name])


def producers(stages: dict[str, Stage], stage: Stage) -> list[str]:
    """The stages whose outputs `stage` depends on (what a worker must pull before running it)."""
    def inside(dep: str, out: str) -> bool:
        return dep == out or dep.startswith(out.rstrip("/") + "/") or out.startswith(dep.rstrip("/") + "/")

    return [s.name for s in stages.values() if s.name != stage.name
            and any(inside(d, o) for d in stage.deps for o in s.outs)]
