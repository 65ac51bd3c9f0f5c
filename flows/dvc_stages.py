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
                             _names(body.get("deps")))
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


def data_hash(project: Path, stage_name: str = "ingest") -> str | None:
    """The DVC hash of a stage's first output as recorded in dvc.lock (the data version a model saw)."""
    lock = Path(project) / "dvc.lock"
    if not lock.is_file():
        return None
    doc = yaml.safe_load(lock.read_text()) or {}
    outs = ((doc.get("stages") or {}).get(stage_name) or {}).get("outs") or []
    return outs[0].get("md5") if outs else None
