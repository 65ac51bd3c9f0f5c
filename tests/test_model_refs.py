"""`dvdm.model_ref`: what a `--model` option or `from_pretrained` accepts, resolved to a local folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dvdm.errors import DvdmError
from dvdm.model_ref import (CHECKPOINT, EXPORT, ModelRefError, checkpoint_folder, fetch_model, model_kind,
                            parse_model_ref)
from dvdm.tracking import registry, runs


def fake_checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"format": "dvdm"}))
    (folder / "ema.safetensors").write_bytes(b"weights")
    return folder


def fake_export(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    (folder / "denoiser.onnx").write_bytes(b"onnx")
    return folder


def test_references_parse_or_name_their_problem(tmp_path):
    r = parse_model_ref("models:/dvdm@champion")
    assert (r.name, r.alias, r.version, r.follows_alias, r.path) == ("dvdm", "champion", None, True, None)
    r = parse_model_ref("models:/dvdm/3")
    assert (r.name, r.alias, r.version, r.is_registry) == ("dvdm", None, "3", True)
    assert parse_model_ref(tmp_path).path == tmp_path.resolve() and not parse_model_ref(tmp_path).is_registry
    for bad, problem in (("models:/dvdm", "look like models:/dvdm@champion"), ("models:/dvdm@", "look like"),
                         ("models:/dvdm/3/x", "look like"), ("s3://bucket/model", "only models:/"),
                         (" ", "empty")):
        with pytest.raises(ModelRefError, match=problem) as info:
            parse_model_ref(bad)
        assert isinstance(info.value, DvdmError) and isinstance(info.value, ValueError)  # CLI line; library ValueError


def test_local_folders_are_told_apart(tmp_path):
    run = tmp_path / "run"
    fake_checkpoint(run / "checkpoint")
    assert model_kind(run) == (CHECKPOINT, run / "checkpoint")
    assert model_kind(run / "checkpoint") == (CHECKPOINT, run / "checkpoint")
    assert checkpoint_folder(run) == run / "checkpoint" and checkpoint_folder(run / "checkpoint") == run / "checkpoint"
    export = fake_export(tmp_path / "export")
    assert model_kind(export) == (EXPORT, export)
    with pytest.raises(ModelRefError, match="no such model folder"):
        model_kind(tmp_path / "missing")
    (tmp_path / "weights.pt").write_bytes(b"x")
    with pytest.raises(ModelRefError, match="a file, expected a folder"):
        model_kind(tmp_path / "weights.pt")
    with pytest.raises(ModelRefError, match="no checkpoint/config.json .* or manifest.json"):
        model_kind(tmp_path)
    with fetch_model(str(run)) as found:
        assert (found.kind, found.folder, found.version) == (CHECKPOINT, run / "checkpoint", None)
        assert found.label == str(run)
    assert run.is_dir()  # a local folder is never deleted


@pytest.fixture(scope="module")
def store(mlflow_store, tmp_path_factory):
    """A store with model `m`: version 1 an export (alias champion), version 2 a checkpoint (alias torch)."""
    client = mlflow_store("model-refs")
    root = tmp_path_factory.mktemp("model-refs")
    for alias, folder in (("champion", fake_export(root / "export")),
                          ("torch", fake_checkpoint(root / "checkpoint"))):
        register(client, folder, "m", alias)
    return client


def register(client, folder: Path, name: str, alias: str) -> None:
    """A new version of `name` holding `folder`'s files (alias `alias`), as the main job registers one."""
    run_id = runs.start_run(client, runs.experiment_name("model-refs"), f"{name}-{alias}")
    model = registry.log_model(client, run_id, lambda path, mlflow_model: shutil.copytree(folder, path))
    registry.register_version(client, model.model_id, name=name, alias=alias)
    runs.end_run(client, run_id)


def test_registered_versions_are_downloaded_for_as_long_as_needed(store):
    with fetch_model("models:/m@champion", tracking_uri=store.tracking_uri) as found:
        assert (found.kind, found.version, found.label) == (EXPORT, "1", "models:/m@champion (version 1)")
        assert (found.folder / "denoiser.onnx").read_bytes() == b"onnx"
        folder = found.folder
    assert not folder.exists()
    found = fetch_model("models:/m/2", tracking_uri=store.tracking_uri)
    assert (found.kind, found.label) == (CHECKPOINT, "models:/m/2")
    assert (found.folder / "config.json").is_file()
    found.close()
    assert not found.folder.exists()
    with pytest.raises(DvdmError, match="no alias 'nope'"):
        fetch_model("models:/m@nope", tracking_uri=store.tracking_uri)


def test_a_missing_embedded_store_is_an_error_not_a_new_database(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVDM_WORK_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelRefError, match=r"no MLflow store at .*work/mlflow/mlflow.db.*MLFLOW_TRACKING_URI"):
        fetch_model("models:/dvdm@champion")
    assert not (tmp_path / "work").exists()
