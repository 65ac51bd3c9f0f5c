"""dvdm.tracking registry + promotion on a real MLflow SQLite store in a temp dir.

Each test registers its own model name, so tests share one module-scoped store (copied from a session
template: a fresh MLflow database takes seconds to migrate) yet stay independent.
"""

from __future__ import annotations

import datetime as dt
import json

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


def _version(client, name, export_dir, metrics, key):
    run_id = runs.start_run(client, runs.experiment_name("synthetic-reg"), f"{name}-{key}")
    registry.upload_model(client, run_id, export_dir)
    mv = registry.register_version(client, run_id, name=name, metrics=metrics, tags={"dvdm.space": "mvres"})
    runs.end_run(client, run_id)
    return mv


def test_register_alias_list_download_roundtrip(client, export_dir, tmp_path):
    name = "dvdm-roundtrip"
    metrics = {"fvd": 321.5, "psnr": 24.25, "fvd_protocol": {"n_real": 8}, "split": "test"}
    mv = _version(client, name, export_dir, metrics, "a")
    assert int(mv.version) == 1
    assert mv.tags["metric.fvd"] == "321.5" and mv.tags["metric.fvd_protocol.n_real"] == "8.0"
    assert "metric.split" not in mv.tags and mv.tags["dvdm.space"] == "mvres"
    assert mv.source.endswith("/artifacts/model") and mv.source.startswith("file://")
    assert registry.get_version(client, registry.CHALLENGER, name).version == mv.version
    assert registry.version_by_alias(client, registry.CHAMPION, name) is None

    # a retried registration of the same run returns the same version
    again = registry.register_version(client, mv.run_id, name=name, metrics=metrics)
    assert again.version == mv.version
    assert len(client.search_model_versions(f"name='{name}'")) == 1

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


def test_register_refuses_a_run_without_the_model_folder(client, tmp_path):
    run_id = runs.start_run(client, runs.experiment_name("synthetic-reg"), "empty")
    with pytest.raises(TrackingError, match="no artifacts under 'model'"):
        registry.register_version(client, run_id, name="dvdm-empty")
    with pytest.raises(TrackingError, match="no exported model folder"):
        registry.upload_model(client, run_id, tmp_path)


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
