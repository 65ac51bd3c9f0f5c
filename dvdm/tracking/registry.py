"""The registered model `dvdm`: versions, aliases, listing, and downloading a version for serving.

A version is an MLflow 3 logged model of a pipeline run (`log_model`): for an ONNX export, a pyfunc model whose
data folder is the export (`serving.mlflow_model` writes and loads it), so `mlflow.pyfunc.load_model` and
`mlflow models serve` run it, while `dvdm serve` downloads the export inside it (`download_version`). Its
source is the logged model's artifact location, not `models:/<model id>`: MLflow's SQL registry resolves that
form through the process-global tracking URI, which this package never sets (the version is still linked to
its run and, through the `mlflow.modelVersions` tag, to its logged model). Versions registered before were a
run's artifact folder (`<run artifacts>/model`); they download the same way. Versions are addressed by aliases
(`challenger`, `champion`); registry stages are deprecated since MLflow 2.9 and are not used.

A version's metrics are its source run's (the pipeline run carries every evaluation number as a real
metric): the promotion gate, `dvdm models` and the service read them there (`version_metrics`). `metric.<name>`
tags, which versions registered before carried (and `register_version(metrics=...)` still writes for a
version whose run has none), are read too and win.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dvdm.tracking.errors import TrackingError
from dvdm.tracking.runs import get_run, numeric_metrics
from dvdm.utils.atomic import atomic_dir, write_json

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.models import Model

MODEL_NAME = "dvdm"
CHAMPION = "champion"
CHALLENGER = "challenger"
MODEL_ARTIFACT_PATH = "model"  # the logged model's name (before: the run's artifact folder)
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # on a logged model: the versions registered from it (MLflow's UI)
METRIC_TAG_PREFIX = "metric."
KEY_METRICS = ("swap_direction_accuracy", "fvd", "kvd", "psnr", "ssim", "first_frame_psnr", "motion_accuracy",
               "sample_seconds_per_clip")
VERSION_FILE = "model_version.json"  # written beside the downloaded artifacts: which version this is


def log_model(client: "MlflowClient", run_id: str, write: Callable[[Path, "Model"], None], *,
              name: str = MODEL_ARTIFACT_PATH, model_type: str | None = None) -> "LoggedModel":
    """A logged model of run `run_id` (MLflow 3: the run's "Logged models", the experiment's "Models" tab)
    whose files `write(folder, mlflow_model)` puts in a new folder (a flavor's `save_model`; `mlflow_model`
    carries the model id, run id and artifact location into its MLmodel). What `mlflow.<flavor>.log_model`
    does, through this client instead of the global tracking URI. The run's params are the model's. Safe to
    retry: a READY model `name` the run already has is returned as it is."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    run = get_run(client, run_id)
    for output in (run.outputs.model_outputs if run.outputs else []):
        existing = client.get_logged_model(output.model_id)
        if existing.name == name and existing.status == LoggedModelStatus.READY:
            return existing
    model = client.create_logged_model(run.info.experiment_id, name=name, source_run_id=run_id,
                                       params=dict(run.data.params), model_type=model_type)
    try:
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="dvdm-model-") as tmp:
            folder = Path(tmp) / name
            write(folder, Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                model_id=model.model_id))
            client.log_model_artifacts(model.model_id, str(folder))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    return client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


def ensure_registered_model(client: "MlflowClient", name: str = MODEL_NAME,
                            description: str | None = None) -> None:
    """Create the registered model `name` unless it exists (another process may create it at the same time)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return
    except MlflowException:
        pass
    try:
        client.create_registered_model(name, description=description)
    except MlflowException:
        client.get_registered_model(name)  # raced: it exists now; anything else raises here


def register_version(client: "MlflowClient", model_id: str, *, name: str = MODEL_NAME,
                     metrics: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
                     description: str | None = None, alias: str | None = CHALLENGER) -> "ModelVersion":
    """Register logged model `model_id` (`log_model`) as a new version of `name` and point `alias` at it.

    `metrics` (e.g. the evaluate stage's metrics.json) are stored as version tags `metric.<key>` (numbers
    only, nested keys dotted, its `params` section left out). Idempotent: a retried registration of the
    same model returns the version the first attempt created instead of adding a duplicate.
    """
    from mlflow.entities import LoggedModelStatus
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_logged_model(model_id)
    except MlflowException as exc:
        raise TrackingError(f"no logged model {model_id} in {client.tracking_uri}") from exc
    if model.status != LoggedModelStatus.READY:
        raise TrackingError(f"logged model {model_id} is {model.status}, not READY: its files were not all logged")
    source, run_id = model.artifact_location, model.source_run_id
    ensure_registered_model(client, name)
    version = next((v for v in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
                    if v.source == source), None)
    if version is None:
        version = client.create_model_version(name, source=source, run_id=run_id, description=description,
                                              model_id=model_id)
        linked = json.loads(model.tags.get(MODEL_VERSIONS_TAG) or "[]")
        client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(
            linked + [{"name": name, "version": str(version.version)}])})
    # evaluate's metrics.json embeds its settings under "params": settings, not metrics
    values = numeric_metrics({k: v for k, v in (metrics or {}).items() if k != "params"})
    all_tags = {**{f"{METRIC_TAG_PREFIX}{k}": _num(v) for k, v in values.items()},
                **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
    for key, value in all_tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return client.get_model_version(name, version.version)


def get_version(client: "MlflowClient", ref: str | int, name: str = MODEL_NAME) -> "ModelVersion":
    """Version `ref` of `name`: a version number (`3`, `"3"`) or an alias (`"champion"`)."""
    from mlflow.exceptions import MlflowException

    ref = str(ref)
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        what = f"version {ref}" if ref.isdigit() else f"alias {ref!r}"
        raise TrackingError(f"registered model {name!r} has no {what} in {client.tracking_uri}") from exc


def version_by_alias(client: "MlflowClient", alias: str, name: str = MODEL_NAME) -> "ModelVersion | None":
    """The version `alias` points to, or None (no such alias, or no such model yet)."""
    try:
        return get_version(client, alias, name)
    except TrackingError:
        return None


def set_alias(client: "MlflowClient", alias: str, version: str | int, name: str = MODEL_NAME) -> None:
    """Point `alias` at `version` (moving it from any other version)."""
    if str(alias).isdigit():
        raise TrackingError(f"alias {alias!r}: an alias cannot be a number (it would read as a version)")
    client.set_registered_model_alias(name, alias, str(version))


def version_metrics(client: "MlflowClient", version: "ModelVersion") -> dict[str, float]:
    """A version's metrics: its `metric.*` tags, over the latest metrics of its source run."""
    from mlflow.exceptions import MlflowException

    out: dict[str, float] = {}
    if version.run_id:
        try:
            out.update(client.get_run(version.run_id).data.metrics)
        except MlflowException:
            pass  # the run was deleted: the tags still hold what was registered
    for key, value in (version.tags or {}).items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                out[key[len(METRIC_TAG_PREFIX):]] = float(value)
            except ValueError:
                continue
    return out


def list_versions(client: "MlflowClient", name: str = MODEL_NAME,
                  metrics: Iterable[str] = KEY_METRICS) -> list[dict[str, Any]]:
    """Every version of `name`, newest first, as plain JSON-ready dicts (`dvdm models --json`).

    Each: name, version, aliases, status, created (ISO 8601 UTC), run_id, source, description, tags
    (without the metric tags) and `metrics` (the key metrics present). An unknown model lists as [].
    """
    from mlflow.exceptions import MlflowException

    try:
        aliases_of: dict[str, list[str]] = {}
        for alias, ver in client.get_registered_model(name).aliases.items():
            aliases_of.setdefault(str(ver), []).append(alias)
    except MlflowException:
        return []
    wanted = list(metrics)
    rows = []
    for v in client.search_model_versions(f"name='{name}'"):
        values = version_metrics(client, v)
        rows.append({
            "name": v.name, "version": int(v.version), "aliases": sorted(aliases_of.get(str(v.version), [])),
            "status": v.status, "created": _iso(v.creation_timestamp), "run_id": v.run_id, "source": v.source,
            "description": v.description or "",
            "tags": {k: t for k, t in (v.tags or {}).items() if not k.startswith(METRIC_TAG_PREFIX)},
            "metrics": {k: _json_num(values[k]) for k in wanted if k in values},
        })
    return sorted(rows, key=lambda r: r["version"], reverse=True)


def download_version(client: "MlflowClient", dst: str | os.PathLike[str], ref: str | int = CHAMPION,
                     name: str = MODEL_NAME) -> Path:
    """Download version `ref` (number or alias) into folder `dst`, atomically; returns `dst`.

    `dst` then holds the export directly (manifest.json, *.onnx, README.md; for a pyfunc version, its data
    folder) plus `model_version.json` (name, version, aliases, source), so a server following an alias can
    tell whether it already has the version the alias points to.
    """
    version = get_version(client, ref, name)
    run_id, rel = _run_relative(client, version)
    aliases = sorted(a for a, v in client.get_registered_model(name).aliases.items()
                     if str(v) == str(version.version))
    with atomic_dir(dst) as tmp:
        staging = tmp / ".download"  # downloads land in <dst_path>/<last folder name>; flattened below
        staging.mkdir()
        if run_id is not None:
            # through the client: its own tracking URI resolves mlflow-artifacts:/ sources, not the global one
            got = Path(client.download_artifacts(run_id, rel, str(staging)))
        else:
            from mlflow.artifacts import download_artifacts

            got = Path(download_artifacts(artifact_uri=version.source, dst_path=str(staging),
                                          tracking_uri=client.tracking_uri))
        if not got.is_dir():
            raise TrackingError(f"model {name} version {version.version}: source {version.source} is not a "
                                "model folder")
        got = pyfunc_data(got)
        for item in list(got.iterdir()):
            shutil.move(str(item), tmp / item.name)
        shutil.rmtree(staging)
        write_json(tmp / VERSION_FILE, {"name": name, "version": int(version.version), "aliases": aliases,
                                        "run_id": version.run_id, "source": version.source})
    return Path(dst)


def pyfunc_data(folder: Path) -> Path:
    """The data folder of the MLflow pyfunc model in `folder` (the export), else `folder` itself (a version
    registered as plain files). Read from MLmodel as YAML: a serve-only install has no `mlflow.models`."""
    mlmodel = folder / "MLmodel"
    if not mlmodel.is_file():
        return folder
    data = ((yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}).get("python_function", {}).get("data")
    if not data or not (folder / data).is_dir():
        raise TrackingError(f"{folder}: an MLflow model without a python_function data folder, not a dvdm export")
    return folder / data


def version_summary(client: "MlflowClient", ref: str | int, name: str = MODEL_NAME) -> str:
    """One line for logs and CLI output: `dvdm v3 (champion) fvd=123.4 psnr=24.1 run 1a2b...`."""
    v = get_version(client, ref, name)
    row = next(r for r in list_versions(client, name) if r["version"] == int(v.version))
    parts = [f"{name} v{v.version}"]
    if row["aliases"]:
        parts.append(f"({', '.join(row['aliases'])})")
    parts += [f"{k}={m:.4g}" for k, m in row["metrics"].items() if m is not None]
    parts.append(f"run {v.run_id}")
    return " ".join(parts)


def _run_relative(client: "MlflowClient", version: "ModelVersion") -> tuple[str | None, str]:
    """(run id, path inside the run's artifacts) when the source lies in its run's artifacts."""
    from mlflow.exceptions import MlflowException

    if not version.run_id:
        return None, ""
    if version.source.startswith("runs:/"):
        rest = version.source[len("runs:/"):].split("/", 1)
        return rest[0], rest[1] if len(rest) > 1 else ""
    try:
        root = client.get_run(version.run_id).info.artifact_uri.rstrip("/")
    except MlflowException:  # a deleted run: download from the source URI instead
        return None, ""
    if version.source.rstrip("/").startswith(root + "/"):
        return version.run_id, version.source.rstrip("/")[len(root) + 1:]
    return None, ""


def _num(value: float) -> str:
    return repr(float(value))


def _json_num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.timezone.utc).isoformat(timespec="seconds")
