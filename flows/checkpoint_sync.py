"""Partial checkpoints of a placed training stage, kept where a retry on another machine finds them.

A worker's clone, and the checkpoint inside it, is gone when its stage run fails; DVC pushes only finished
stages. So while a resumable stage's command runs, `syncing` polls `<out>/checkpoint` and uploads each new
complete checkpoint as artifacts of the pipeline's parent run (`resume/<stage>/checkpoint` and the training
log `resume/<stage>/metrics.jsonl`, then `resume/<stage>/manifest.json` with its step and the sha256 of every
file); a retry, on any worker, calls `restore` before its command, so its curve continues the failed
attempt's. The last upload wins: one copy per stage and pipeline run.

Trainers replace `<out>/checkpoint` as a whole (temporary sibling + rename), so a snapshot is copied first and
kept only when the checkpoint did not change while it was copied; the manifest goes up last and `restore`
checks every file against it, so an upload cut short (a worker killed mid-way) is never resumed from.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from dvdm.runtime.manifest import sha256_file
from dvdm.stages.curves import LOG_FILE
from dvdm.tracking import runs
from dvdm.utils.atomic import atomic_dir

POLL_SECONDS = 5.0  # how often a running stage's checkpoint folder is looked at
MANIFEST = "manifest.json"


def artifact_dir(stage_name: str) -> str:
    """Where a stage's partial checkpoint lives among the parent run's artifacts."""
    return f"resume/{stage_name}"


def _identity(folder: Path) -> str | None:
    """The checkpoint's config.json (step, settings fingerprint): what tells one checkpoint from the next."""
    try:
        return (folder / "config.json").read_text()
    except OSError:
        return None


def _scratch(folder: Path) -> tempfile.TemporaryDirectory:
    """A temporary folder beside the checkpoint: on the disk that holds checkpoints (a worker's temp dir may be
    small), and a rename away from it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{folder.name}.resume-", dir=folder.parent)


def snapshot(folder: Path, into: Path) -> dict[str, Any] | None:
    """Copy the checkpoint at `folder` to `into`; its manifest, or None when there is no complete checkpoint
    or it was replaced while being copied."""
    before = _identity(folder)
    if before is None:
        return None
    try:
        shutil.copytree(folder, into)
    except (OSError, shutil.Error):  # renamed away under the copy
        return None
    if _identity(folder) != before or _identity(into) != before:
        return None
    manifest = {"step": int(json.loads(before).get("step", 0)),
                "files": {p.name: sha256_file(p) for p in sorted(into.iterdir()) if p.is_file()}}
    log = folder.parent / LOG_FILE  # the curve so far (copied after the checkpoint: it reaches at least its step)
    if log.is_file():
        shutil.copy(log, into.parent / LOG_FILE)
        manifest["log"] = sha256_file(into.parent / LOG_FILE)
    return manifest


def upload(client: Any, run_id: str, stage_name: str, folder: Path) -> int | None:
    """Upload the checkpoint at `folder` to run `run_id`; the step uploaded, or None when there was nothing
    complete to upload."""
    with _scratch(folder) as tmp:
        manifest = snapshot(folder, Path(tmp) / "checkpoint")
        if manifest is None:
            return None
        runs.log_artifacts(client, run_id, Path(tmp) / "checkpoint", f"{artifact_dir(stage_name)}/checkpoint")
        if "log" in manifest:
            client.log_artifact(run_id, str(Path(tmp) / LOG_FILE), artifact_dir(stage_name))
        client.log_text(run_id, json.dumps(manifest, indent=2), f"{artifact_dir(stage_name)}/{MANIFEST}")
    return manifest["step"]


def restore(client: Any, run_id: str, stage_name: str, folder: Path) -> tuple[int | None, str]:
    """Put the checkpoint an earlier attempt uploaded to run `run_id` at `folder` (replacing what is there).
    (its step, or None when none was placed; why)."""
    where = artifact_dir(stage_name)
    if MANIFEST not in {Path(a.path).name for a in client.list_artifacts(run_id, where)}:
        return None, "no earlier attempt saved a checkpoint"
    with _scratch(folder) as tmp:
        manifest = json.loads(Path(client.download_artifacts(run_id, f"{where}/{MANIFEST}", tmp)).read_text())
        got = Path(client.download_artifacts(run_id, f"{where}/checkpoint", tmp))
        broken = [n for n, digest in manifest["files"].items()
                  if not (got / n).is_file() or sha256_file(got / n) != digest]
        if broken:
            return None, (f"the saved checkpoint of step {manifest['step']} is incomplete (its upload was cut "
                          f"short: {', '.join(broken)})")
        log = Path(client.download_artifacts(run_id, f"{where}/{LOG_FILE}", tmp)) if "log" in manifest else None
        if log is not None and sha256_file(log) != manifest["log"]:
            log = None  # the checkpoint is whole; the curve before it is lost, as it would be without a log
        with atomic_dir(folder) as staged:
            for name in manifest["files"]:
                shutil.move(str(got / name), staged / name)
        if log is not None:  # the trainer drops its records past the checkpoint when it resumes
            shutil.copy(log, folder.parent / LOG_FILE)
    return int(manifest["step"]), f"run {run_id} artifacts {where}"


class _Poller(threading.Thread):
    def __init__(self, folder: Path, send: Callable[[Path], int | None], logger: Any, every: float) -> None:
        super().__init__(name=f"checkpoint-sync {folder}", daemon=True)
        self.folder, self.send, self.logger, self.every = folder, send, logger, every
        self.stop = threading.Event()
        self.seen = _identity(folder)  # what was there before the command ran is not news
        self.sent: list[int] = []

    def poll(self) -> None:
        current = _identity(self.folder)
        if current is None or current == self.seen:
            return
        try:
            step = self.send(self.folder)
        except Exception as exc:  # the stage goes on; a retry then resumes from an older checkpoint, or none
            self.logger.warning("could not save the checkpoint at %s for a retry: %s", self.folder, exc)
            return
        if step is not None:
            self.seen = current
            self.sent.append(step)
            self.logger.info("saved the checkpoint of step %d for a retry", step)

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.poll()


@contextlib.contextmanager
def syncing(client: Any, run_id: str, stage_name: str, folder: Path, logger: Any,
            every: float | None = None) -> Iterator[list[int]]:
    """Upload each new checkpoint at `folder` to run `run_id` while the block runs (yields the steps uploaded
    so far). The poller stops when the block ends; when the block fails, a checkpoint written since the last
    poll goes up too. A successful stage's final checkpoint travels through DVC instead."""
    poller = _Poller(folder, lambda f: upload(client, run_id, stage_name, f), logger,
                     POLL_SECONDS if every is None else every)
    poller.start()
    failed = False
    try:
        yield poller.sent
    except Exception:
        failed = True
        raise
    finally:
        poller.stop.set()
        poller.join()
        if failed:
            poller.poll()
