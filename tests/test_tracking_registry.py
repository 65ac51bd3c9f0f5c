"""dvdm.tracking registry + promotion on a real MLflow SQLite store in a temp dir.

Each test registers its own model name, so tests share one module-scoped store (copied from a session
template: a fresh MLflow database takes seconds to migrate) yet stay independent.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest

from dvdm.tracking import registry, runs
from dvdm.tracking.errors import TrackingError
from dvdm.tracking.promotion import Gate, promote


@pytest.fixture(scope="module")
def client(mlflow_store):
    return mlflow_store("registry-store")


@pytest.fixture
def export_dir(tmp_path):
    """What the export stage writes: ONNX graphs, a manifest, a model card."""
    out = tmp_path / "export"
    out.mkdir()
    (out / "denoiser.onnx").write_bytes(b"onnx-bytes")
    (out / "manifest.json").write_text(json.dumps({"space": "mvres", "frames": 16}))
    (out / "README.md").write_text("# Model card\n")
    return out


def copy_of(folder):
    """A `write` for registry.log_model: the folder's files as they are (no MLflow flavor)."""
    return lambda path, mlflow_model: shutil.copytree(folder, path)


def _version(client, name, export_dir, metrics, key):
    run_id = runs.start_run(client, runs.experiment_name("synthetic-reg"), f"{name}-{key}")
    model = registry.log_model(client, run_id, copy_of(export_dir))
    mv = registry.register_version(client, model.model_id, name=name, metrics=metrics, tags={"dvdm.space": "mvres"})
    runs.end_run(client, run_id)
    return mv


def test_register_alias_list_download_roundtrip(client, export_dir, tmp_path):
    name = "dvdm-roundtrip"
    metrics = {"fvd": 321.5, "psnr": 24.25, "fvd_protocol": {"n_real": 8}, "split": "test"}
    mv = _version(client, name, export_dir, metrics, "a")
    assert int(mv.version) == 1
    assert mv.tags["metric.fvd"] == "321.5" and mv.tags["metric.fvd_protocol.n_real"] == "8.0"
    assert "metric.split" not in mv.tags and mv.tags["dvdm.space"] == "mvres"
    model = client.get_logged_model(client.get_run(mv.run_id).outputs.model_outputs[0].model_id)
    assert mv.source == model.artifact_location and mv.source.startswith("file://")  # the logged model's files
    assert json.loads(model.tags[registry.MODEL_VERSIONS_TAG]) == [{"name": name, "version": "1"}]
    assert registry.get_version(client, registry.CHALLENGER, name).version == mv.version
    assert registry.version_by_alias(client, registry.CHAMPION, name) is None

    # a retried logging and registration of the same run returns the same model and version
    assert registry.log_model(client, mv.run_id, copy_of(export_dir)).model_id == model.model_id
    again = registry.register_version(client, model.model_id, name=name, metrics=metrics)
    assert again.version == mv.version
    assert len(client.search_model_versions(f"name='{name}'")) == 1
    assert len(json.loads(client.get_logged_model(model.model_id).tags[registry.MODEL_VERSIONS_TAG])) == 1

    registry.set_alias(client, registry.CHAMPION, mv.version, name)
    assert client.get_model_version_by_alias(name, registry.CHAMPION).version == mv.version
    with pytest.raises(TrackingError, match="number"):
        registry.set_alias(client, "2", mv.version, name)

    rows = registry.list_versions(client, name)
    assert rows == json.loads(json.dumps(rows))  # plain JSON for `dvdm models --json`
    assert rows[0]["version"] == 1 and rows[0]["aliases"] == ["challenger", "champion"]
    assert rows[0]["metrics"] == {"fvd": 321.5, "psnr": 24.25}
    assert "metric.fvd" not in rows[0]["tags"]
    assert registry.list_versions(client, "no-such-model") == []
    assert "v1 (challenger, champion)" in registry.version_summary(client, "champion", name)

    dst = tmp_path / "serve" / "model"
    assert registry.download_version(client, dst, "champion", name) == dst
    assert sorted(p.name for p in dst.iterdir()) == ["README.md", "denoiser.onnx", "manifest.json",
                                                     registry.VERSION_FILE]
    assert (dst / "denoiser.onnx").read_bytes() == b"onnx-bytes"
    info = json.loads((dst / registry.VERSION_FILE).read_text())
    assert info["version"] == 1 and info["aliases"] == ["challenger", "champion"]
    registry.download_version(client, dst, 1, name)  # replaces the folder as a whole
    with pytest.raises(TrackingError, match="no alias 'missing'"):
        registry.download_version(client, tmp_path / "x", "missing", name)
    with pytest.raises(TrackingError, match="no version 7"):
        registry.get_version(client, 7, name)


def test_a_model_whose_files_failed_is_never_registered(client, tmp_path, export_dir):
    run_id = runs.start_run(client, runs.experiment_name("synthetic-reg"), "failing")

    def broken(path, mlflow_model):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.log_model(client, run_id, broken)
    failed = client.get_logged_model(client.get_run(run_id).outputs.model_outputs[0].model_id)
    assert failed.status == "FAILED"
    with pytest.raises(TrackingError, match="not READY"):
        registry.register_version(client, failed.model_id, name="dvdm-failed")
    with pytest.raises(TrackingError, match="no logged model m-missing"):
        registry.register_version(client, "m-missing", name="dvdm-failed")
    retried = registry.log_model(client, run_id, copy_of(export_dir))  # a retry logs the files anew
    assert retried.model_id != failed.model_id and retried.status == "READY"


def test_version_metrics_fall_back_to_the_run(client, export_dir):
    mv = _version(client, "dvdm-fallback", export_dir, {"fvd": 100.0}, "a")
    runs.log_metrics(client, mv.run_id, {"psnr": 30.0, "fvd": 999.0})
    assert registry.version_metrics(client, client.get_model_version("dvdm-fallback", mv.version)) == \
        {"psnr": 30.0, "fvd": 100.0}  # version tags win over the run


def test_promote_moves_the_alias_only_on_a_win(client, export_dir):
    name = "dvdm-promote"
    gate = Gate(metric="fvd", direction="min", margin=5.0)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)

    v1 = _version(client, name, export_dir, {"fvd": 300.0}, "v1")
    first = promote(client, v1.version, gate, name=name, now=when)
    assert first.promote and "no champion" in first.reason
    assert registry.get_version(client, "champion", name).version == v1.version
    tags = client.get_model_version(name, v1.version).tags
    assert tags["promoted_at"] == "2026-01-02T03:04:05+00:00" and tags["previous_champion"] == "none"
    assert tags["gate.decision"] == "promoted"

    v2 = _version(client, name, export_dir, {"fvd": 297.0}, "v2")  # better, but not by the margin
    lost = promote(client, v2.version, gate, name=name, now=when)
    assert not lost.promote and lost.decided
    assert (lost.challenger_value, lost.champion_value, lost.champion_version) == (297.0, 300.0, str(v1.version))
    assert registry.get_version(client, "champion", name).version == v1.version
    assert registry.get_version(client, "challenger", name).version == v2.version
    tags = client.get_model_version(name, v2.version).tags
    assert tags["gate.decision"] == "refused" and "does not beat" in tags["gate.reason"]
    assert "promoted_at" not in tags

    v3 = _version(client, name, export_dir, {"fvd": 250.0}, "v3")
    won = promote(client, v3.version, gate, name=name, now=when)
    assert won.promote and registry.get_version(client, "champion", name).version == v3.version
    tags = client.get_model_version(name, v3.version).tags
    assert tags["previous_champion"] == str(v1.version) and tags["gate.champion_value"] == "300.0"
    assert tags["gate.challenger_value"] == "250.0" and tags["gate.metric"] == "fvd"
    assert client.get_model_version(name, v1.version).tags["superseded_by"] == str(v3.version)

    same = promote(client, v3.version, gate, name=name)
    assert not same.promote and "already" in same.reason

    v4 = _version(client, name, export_dir, {"psnr": 40.0}, "v4")  # no fvd: cannot decide, no promotion
    undecided = promote(client, v4.version, gate, name=name)
    assert not undecided.promote and not undecided.decided and "'fvd'" in undecided.reason
    assert registry.get_version(client, "champion", name).version == v3.version
    assert client.get_model_version(name, v4.version).tags["gate.decision"] == "undecided"

    rows = registry.list_versions(client, name)
    assert [r["version"] for r in rows] == [4, 3, 2, 1]
    assert rows[1]["aliases"] == ["champion"] and rows[0]["aliases"] == ["challenger"]


def test_a_version_registered_as_a_run_artifact_folder_still_downloads(client, export_dir, tmp_path):
    """Versions registered before they were logged models: the run's artifact folder `model`, flat."""
    run_id = runs.start_run(client, runs.experiment_name("synthetic-reg"), "old-layout")
    client.log_artifacts(run_id, str(export_dir), "model")
    registry.ensure_registered_model(client, "dvdm-old")
    client.create_model_version("dvdm-old", source=f"{client.get_run(run_id).info.artifact_uri}/model", run_id=run_id)
    dst = registry.download_version(client, tmp_path / "old", 1, "dvdm-old")
    assert sorted(p.name for p in dst.iterdir()) == ["README.md", "denoiser.onnx", "manifest.json",
                                                     registry.VERSION_FILE]
