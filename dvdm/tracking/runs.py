"""Runs with explicit ids: one parent run per pipeline run, one child run per stage, safe under retries.

A run is found again by a deterministic key (tag `dvdm.run_key`, e.g. `<flow run id>/train-diffusion`): a
retried task that starts "its" run gets the same run back (status reset to RUNNING) instead of a second,
orphaned one. Only a FINISHED run is not reused, so a deliberate rerun of a completed stage gets a fresh run.
A failed attempt marks its run FAILED with the error as a tag; the retry flips it back to RUNNING.

A pipeline's parent run records its owner (tags `dvdm.owner.*`: host, pid and the process's start time). A
process killed with SIGKILL cannot close its run, so the next pipeline start closes every RUNNING run whose owner
is a process of this host that no longer exists (`close_orphaned_runs`) as KILLED, children included; runs of a
live pipeline, and of other hosts, are left alone.

Everything goes through `MlflowClient` and run ids. The fluent API (`mlflow.start_run`, active runs,
`MLFLOW_RUN_ID`) keeps per-process state that breaks when one process runs many tasks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dvdm.tracking.errors import TrackingError
from dvdm.tracking.store import ensure_experiment

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

RUN_KEY_TAG = "dvdm.run_key"
PARENT_TAG = "mlflow.parentRunId"          # what the MLflow UI nests child runs by
GIT_COMMIT_TAG = "mlflow.source.git.commit"  # what the MLflow UI shows as the source version
SOURCE_NAME_TAG = "mlflow.source.name"       # the UI's "Source" (shown with the commit)
SOURCE_TYPE_TAG = "mlflow.source.type"
DATA_HASH_TAG = "dvdm.data_hash"
SPACE_TAG = "dvdm.space"
ERROR_TAG = "dvdm.error"
VERSION_TAG = "dvdm.version"
OWNER_HOST_TAG = "dvdm.owner.host"
OWNER_PID_TAG = "dvdm.owner.pid"
OWNER_STARTED_TAG = "dvdm.owner.started"  # the pid's start time, so a reused pid is not taken for the owner
DESCRIPTION_TAG = "mlflow.note.content"   # what the MLflow UI shows (as markdown) as a run's description
DATASET_CONTEXT_TAG = "mlflow.data.context"  # how a run used a dataset input (the UI shows it beside the name)

# MLflow's limits (mlflow.utils.validation): longer values are rejected, not truncated.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_DIGEST = 36  # a dataset digest (a DVC md5 + ".dir" is exactly that)

_KEY_OK = re.compile(r"[^/\w.\- :]")
_RUN_KEY_OK = re.compile(r"^[^'\"\\]{1,250}$")  # quoted into a search filter


def experiment_name(dataset: str) -> str:
    """One experiment per dataset: `dvdm-<dataset>`."""
    if not dataset:
        raise TrackingError("experiment_name: the dataset name is empty")
    return f"dvdm-{dataset}"


# ---------------------------------------------------------------------------------------------- runs


def find_run(client: "MlflowClient", experiment_id: str, key: str, parent_run_id: str | None = None,
             include_finished: bool = False) -> "Run | None":
    """The newest active run with run key `key` (under `parent_run_id`), skipping FINISHED ones unless asked."""
    _check_run_key(key)
    query = f"tags.`{RUN_KEY_TAG}` = '{key}'"
    if parent_run_id:
        query += f" and tags.`{PARENT_TAG}` = '{parent_run_id}'"
    if not include_finished:  # in the query, so many finished reruns of one key cannot hide the open one
        query += " and attributes.status != 'FINISHED'"
    runs = client.search_runs([experiment_id], query, order_by=["attributes.start_time DESC"], max_results=100)
    # MLflow cannot filter on a missing tag: drop child runs when looking for a parent run's key
    return next((r for r in runs if r.data.tags.get(PARENT_TAG) == parent_run_id), None)


def start_run(client: "MlflowClient", experiment: str, key: str, *, name: str | None = None,
              tags: Mapping[str, Any] | None = None, reuse_finished: bool = False,
              start_time_ms: int | None = None) -> str:
    """Start (or resume, see the module doc) the parent run `key` in experiment `experiment`; its id.

    The experiment is created if missing. `tags` are set on a new and on a reused run alike. `start_time_ms`
    (epoch milliseconds, default now) is when a new run started.
    """
    return _start(client, ensure_experiment(client, experiment), key, name, tags, None, reuse_finished,
                  start_time_ms)


def start_child_run(client: "MlflowClient", parent_run_id: str, key: str, *, name: str | None = None,
                    tags: Mapping[str, Any] | None = None, reuse_finished: bool = False,
                    start_time_ms: int | None = None) -> str:
    """Start (or resume) child run `key` of `parent_run_id`, in the parent's experiment; its id.

    Keys are scoped to the parent, so every pipeline run can use the stage names as keys. A run logged after
    the work it records gives the work's real start as `start_time_ms`, so the UI shows its real duration.
    """
    parent = get_run(client, parent_run_id)
    return _start(client, parent.info.experiment_id, key, name, tags, parent_run_id, reuse_finished,
                  start_time_ms)


def _start(client: "MlflowClient", experiment_id: str, key: str, name: str | None,
           tags: Mapping[str, Any] | None, parent_run_id: str | None, reuse_finished: bool,
           start_time_ms: int | None = None) -> str:
    run = find_run(client, experiment_id, key, parent_run_id, include_finished=reuse_finished)
    extra = {k: v for k, v in (tags or {}).items() if v is not None}
    if run is not None:
        run_id = run.info.run_id
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        if run.data.tags.get(ERROR_TAG):
            client.delete_tag(run_id, ERROR_TAG)
        set_tags(client, run_id, extra)
        return run_id
    start = {RUN_KEY_TAG: key, **({PARENT_TAG: parent_run_id} if parent_run_id else {})}
    created = client.create_run(experiment_id, start_time=start_time_ms, run_name=name,
                                tags={k: _tag_value(v) for k, v in {**extra, **start}.items()})
    return created.info.run_id


def get_run(client: "MlflowClient", run_id: str) -> "Run":
    """The run `run_id`, or a TrackingError that names it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"MLflow run {run_id!r} not found in {client.tracking_uri}: {exc.message}") from exc


def end_run(client: "MlflowClient", run_id: str, status: str = "FINISHED", end_time_ms: int | None = None) -> None:
    """Mark the run FINISHED (or FAILED / KILLED), at `end_time_ms` (epoch milliseconds, default now)."""
    client.set_terminated(run_id, status=status, end_time=end_time_ms)


def fail_run(client: "MlflowClient", run_id: str, error: BaseException | str | None = None) -> None:
    """Mark the run FAILED and record why (tag `dvdm.error`), so the UI shows the cause without logs."""
    if error is not None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        client.set_tag(run_id, ERROR_TAG, _clip(text, MAX_TAG_VALUE))
    client.set_terminated(run_id, status="FAILED")


@contextlib.contextmanager
def tracked_run(client: "MlflowClient", key: str, *, experiment: str | None = None,
                parent_run_id: str | None = None, name: str | None = None,
                tags: Mapping[str, Any] | None = None, start_time_ms: int | None = None,
                end_time_ms: int | None = None) -> Iterator[str]:
    """`with tracked_run(client, "train", parent_run_id=p) as run_id:` start or resume, then end the run.

    FINISHED on success, FAILED (with the error) on an exception, KILLED on Ctrl-C; the exception propagates.
    Give `experiment` for a parent run, `parent_run_id` for a child run. `start_time_ms` / `end_time_ms`:
    when the work the run records started and ended, if not now (a FINISHED run only: a failure ends now).
    """
    if parent_run_id:
        run_id = start_child_run(client, parent_run_id, key, name=name, tags=tags, start_time_ms=start_time_ms)
    elif experiment:
        run_id = start_run(client, experiment, key, name=name, tags=tags, start_time_ms=start_time_ms)
    else:
        raise TrackingError("tracked_run: give an experiment (parent run) or a parent_run_id (child run)")
    try:
        yield run_id
    except KeyboardInterrupt:
        end_run(client, run_id, "KILLED")
        raise
    except BaseException as exc:
        fail_run(client, run_id, exc)
        raise
    end_run(client, run_id, end_time_ms=end_time_ms)


# ---------------------------------------------------------------------------------------------- orphans


def process_start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, from /proc, with the boot id); None where /proc
    cannot tell (not Linux, no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    return f"{boot}/{stat[stat.rindex(')') + 2:].split()[19]}"  # field 22, after the parenthesised name


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """Tags naming the process that owns a run: host, pid, and the pid's start time where known."""
    pid = os.getpid() if pid is None else pid
    tags = {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(pid),
            OWNER_STARTED_TAG: process_start_time(pid)}
    return {k: v for k, v in tags.items() if v}


def owner_alive(tags: Mapping[str, str]) -> bool | None:
    """Is the process named by a run's owner tags still running? None when it cannot be told (another host,
    no owner tags)."""
    if tags.get(OWNER_HOST_TAG) != socket.gethostname() or not tags.get(OWNER_PID_TAG, "").isdigit():
        return None
    pid = int(tags[OWNER_PID_TAG])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    recorded = tags.get(OWNER_STARTED_TAG)
    return recorded is None or process_start_time(pid) in (None, recorded)


def close_orphaned_runs(client: "MlflowClient", status: str = "KILLED") -> list[str]:
    """Close the RUNNING runs whose owning process died (see the module doc) and their RUNNING child runs; the
    ids closed. Each gets a `dvdm.error` tag saying which process died."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    closed: list[str] = []
    for run in client.search_runs(experiments, f"attributes.status = 'RUNNING' and tags.`{OWNER_PID_TAG}` != ''",
                                  max_results=1000):
        tags = run.data.tags
        if owner_alive(tags) is not False:
            continue
        reason = (f"closed as {status} by a later pipeline start: its process (pid {tags[OWNER_PID_TAG]} on "
                  f"{tags[OWNER_HOST_TAG]}) died without ending the run")
        children = client.search_runs([run.info.experiment_id], f"attributes.status = 'RUNNING' and "
                                      f"tags.`{PARENT_TAG}` = '{run.info.run_id}'", max_results=1000)
        for r in [*children, run]:
            client.set_tag(r.info.run_id, ERROR_TAG, reason)
            end_run(client, r.info.run_id, status)
            closed.append(r.info.run_id)
    return closed


# ---------------------------------------------------------------------------------------------- logging


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, JSON for lists, values cut to MLflow's 6000 chars.

    Keys get MLflow's allowed characters (others become `_`). An empty section stays visible as `{}`.
    """
    out: dict[str, str] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            if not value and key:
                out[clean_key(key)] = "{}"
            for k, v in value.items():
                walk(f"{key}.{k}" if key else str(k), v)
        else:
            out[clean_key(key)] = _clip(_param_value(value), MAX_PARAM_VALUE)

    walk(prefix, config)
    return out


def log_config(client: "MlflowClient", run_id: str, config: Mapping[str, Any],
               artifact_file: str | None = "config.json") -> dict[str, str]:
    """Log the resolved config as flattened params (and whole, untruncated, as a JSON artifact).

    MLflow params are immutable: values already logged with the same value are skipped (a retry), a
    different value is an error (the run key does not identify the config). Returns the params logged.
    """
    from mlflow.entities import Param

    params = flatten_params(config)
    existing = get_run(client, run_id).data.params
    clash = {k: (existing[k], v) for k, v in params.items() if k in existing and existing[k] != v}
    if clash:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(clash.items())[:5])
        raise TrackingError(f"run {run_id} already has different values for {len(clash)} params ({shown}); "
                            "a resumed run must get the same config, so use a different run key")
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    for i in range(0, len(new), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=new[i:i + PARAMS_PER_BATCH])
    if artifact_file:
        client.log_text(run_id, json.dumps(config, indent=2, default=str) + "\n", artifact_file)
    return params


def numeric_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers in a (nested) metrics dict, dotted keys; strings, lists and None are left out."""
    out: dict[str, float] = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{key}.{k}" if key else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[clean_key(key)] = float(value)
        elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
            out[clean_key(key)] = float(value.item())

    walk(prefix, metrics)
    return out


def log_metrics(client: "MlflowClient", run_id: str, metrics: Mapping[str, Any], step: int = 0,
                timestamp_ms: int | None = None) -> dict[str, float]:
    """Log the numeric values of `metrics` (nested dicts flattened) at `step`, in batched calls."""
    from mlflow.entities import Metric

    values = numeric_metrics(metrics)
    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    log_metric_batch(client, run_id, [Metric(k, v, ts, step) for k, v in values.items()])
    return values


def log_metric_batch(client: "MlflowClient", run_id: str, metrics: list) -> None:
    """Log `mlflow.entities.Metric`s in as few calls as MLflow's batch limit (1000) allows."""
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_BATCH])


def log_history(client: "MlflowClient", run_id: str,
                points: Iterable[tuple[int, int, Mapping[str, Any]]]) -> int:
    """Log a metric history: (step, timestamp in epoch ms, metrics) per point, every point at its own step (a
    training curve keeps every logged step), in batched calls; the number of values logged."""
    from mlflow.entities import Metric

    values = [Metric(k, v, int(ts), int(step)) for step, ts, metrics in points
              for k, v in numeric_metrics(metrics).items()]
    log_metric_batch(client, run_id, values)
    return len(values)


def measured_values(results: Mapping[str, Any]) -> dict[str, float]:
    """The numbers a stage measured, from its results file: settings (`params`) and the descriptions of how a
    value was measured (`*_protocol`) are left out, so they do not show up as metrics."""
    return numeric_metrics({k: v for k, v in results.items() if k != "params" and not k.endswith("_protocol")})


def set_description(client: "MlflowClient", run_id: str, markdown: str) -> None:
    """The run's description (tag `mlflow.note.content`): markdown, shown on the run page and in the runs table."""
    client.set_tag(run_id, DESCRIPTION_TAG, _clip(markdown, MAX_TAG_VALUE))


def log_dataset(client: "MlflowClient", run_id: str, path: str | os.PathLike[str], digest: str, *,
                name: str | None = None, context: str | None = None) -> None:
    """Record the DVC-tracked data at `path` (as dvc.yaml names it, relative to the project: the same on every
    machine, where `dvc pull` puts it) as an input of the run: an MLflow dataset named `name` (default: the
    path) whose digest is its DVC hash (md5, `.dir` for a folder), so runs that saw the same data show the
    same dataset version. `context` (e.g. the stage that read it) is shown beside it."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    dataset = MetaDataset(LocalArtifactDatasetSource(str(path)), name=name or str(path), digest=digest[:MAX_DIGEST])
    tags = [InputTag(DATASET_CONTEXT_TAG, context)] if context else []
    # the entity is what the fluent `mlflow.log_input` builds too; the client API takes entities only
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])


def log_artifacts(client: "MlflowClient", run_id: str, path: str | os.PathLike[str],
                  artifact_path: str | None = None) -> str:
    """Upload a file or a whole folder to the run (under `artifact_path`); the artifact's run-relative path."""
    path = Path(path)
    if path.is_file():
        client.log_artifact(run_id, str(path), artifact_path)
        return posixpath.join(artifact_path or "", path.name)
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
        return artifact_path or ""
    raise TrackingError(f"{path}: no such file or folder to log as an artifact of run {run_id}")


def set_tags(client: "MlflowClient", run_id: str, tags: Mapping[str, Any]) -> None:
    """Set tags in one call (None values skipped, values cut to MLflow's 8000 chars)."""
    from mlflow.entities import RunTag

    items = [RunTag(k, _tag_value(v)) for k, v in tags.items() if v is not None]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=items[i:i + PARAMS_PER_BATCH])


# ---------------------------------------------------------------------------------------------- provenance


def git_commit(path: str | os.PathLike[str] | None = None) -> str | None:
    """The commit checked out at `path` (default: the current directory); None outside a git repository."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path or None, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", sha) else None


_HASH = re.compile(r"[0-9a-f]{32}(\.dir)?")


def dvc_data_hash(source: str | os.PathLike[str], out: str | None = None, stage: str | None = None) -> str:
    """The DVC hash of the data a run used.

    `source` is either a hash already (`<md5>` or `<md5>.dir`, returned as is) or a `dvc.lock` / `.dvc`
    file. From a file: the hash of output `out` (e.g. `data/ingested`), else of all outputs of `stage`,
    else of all outputs; several outputs are combined into one md5 over their sorted `path md5` lines.
    """
    if isinstance(source, str) and _HASH.fullmatch(source):
        return source
    import yaml

    path = Path(source)
    if not path.is_file():
        raise TrackingError(f"{path}: not a dvc.lock / .dvc file, nor an md5 hash")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TrackingError(f"{path}: not valid YAML: {exc}") from exc
    if "stages" in doc:
        stages = doc["stages"] or {}
        if stage is not None and stage not in stages:
            raise TrackingError(f"{path}: no stage {stage!r} (stages: {', '.join(stages) or 'none'})")
        entries = [o for name, s in stages.items() if stage in (None, name) for o in (s or {}).get("outs", [])]
    else:
        entries = list(doc.get("outs") or [])
    hashes = {posixpath.normpath(str(e["path"])): str(e.get("md5") or e.get("etag") or e.get("checksum") or "")
              for e in entries if isinstance(e, dict) and "path" in e}
    if out is not None:
        want = posixpath.normpath(out)
        if want not in hashes:
            raise TrackingError(f"{path}: no output {out!r} (outputs: {', '.join(sorted(hashes)) or 'none'})")
        hashes = {want: hashes[want]}
    if not hashes or not all(hashes.values()):
        raise TrackingError(f"{path}: no hashed outputs{f' for stage {stage}' if stage else ''}; run dvc repro "
                            "or dvc commit first")
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    lines = "".join(f"{p} {h}\n" for p, h in sorted(hashes.items()))
    return hashlib.md5(lines.encode()).hexdigest()


def provenance_tags(project: str | os.PathLike[str] | None = None, data_hash: str | None = None,
                    space: str | None = None) -> dict[str, str]:
    """Tags every run carries: git commit (inside a git repo), DVC data hash, target space, dvdm version."""
    from dvdm import __version__

    tags = {VERSION_TAG: __version__, GIT_COMMIT_TAG: git_commit(project), DATA_HASH_TAG: data_hash,
            SPACE_TAG: space}
    return {k: v for k, v in tags.items() if v}


def source_tags(name: str, project: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Tags that make the MLflow UI's Source column say what ran (`name`, e.g. the command) at which commit."""
    tags = {SOURCE_NAME_TAG: name, SOURCE_TYPE_TAG: "LOCAL", GIT_COMMIT_TAG: git_commit(project)}
    return {k: v for k, v in tags.items() if v}


# ---------------------------------------------------------------------------------------------- helpers


def clean_key(key: str) -> str:
    """A param/metric/tag key MLflow accepts: allowed characters only, no path tricks, at most 250 chars."""
    key = _KEY_OK.sub("_", str(key))
    norm = posixpath.normpath(key) if key else "."
    if norm != key or norm in (".", "..") or norm.startswith(("..", "/")):
        key = key.replace("/", "_")
        key = "_" if key in ("", ".", "..") else key
    return key[:MAX_KEY]


def _check_run_key(key: str) -> None:
    if not _RUN_KEY_OK.match(key):
        raise TrackingError(f"run key {key!r}: 1-250 characters without quotes or backslashes")


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    return str(value)


def _tag_value(value: Any) -> str:
    return _clip(value if isinstance(value, str) else str(value), MAX_TAG_VALUE)


def _clip(text: str, limit: int) -> str:
    marker = "...[truncated]"
    return text if len(text) <= limit else text[:limit - len(marker)] + marker
