"""The API docs (/docs, /redoc, /openapi.json) name the model serving now, not a fixed method."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import ServeSettings


def loaded(space: str, description: str | None, name: str | None = "dvdm", label: str = "3"):
    """What the docs read of a loaded model: its registry name, label and the export manifest's space."""
    manifest = {"space": {"name": space, **({"description": description} if description else {})}}
    return SimpleNamespace(name=name, label=label, pipeline=SimpleNamespace(manifest=manifest))


def test_docs_name_the_loaded_models_space_and_follow_a_swap(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    app = create_app(tmp_path, settings=ServeSettings(provider="cpu", threads=1))
    client = TestClient(app)  # no lifespan: nothing loads, the test sets the current model itself

    def described() -> str:
        info = client.get("/openapi.json").json()["info"]
        assert "VDM" not in info["summary"]  # the fixed summary names no method
        return info["description"]

    assert described().startswith("No model is loaded yet.")
    app.state.manager.current = loaded("mvres", "ED-VDM: the denoiser generates motion vectors + residuals")
    assert described().startswith("Serving dvdm version 3: ED-VDM: the denoiser generates motion vectors + "
                                   "residuals (target space `mvres`).")
    app.state.manager.current = loaded("diff", "D-VDM: the denoiser generates differences", label="4")
    assert "Serving dvdm version 4: D-VDM" in described() and "ED-VDM" not in described()
    app.state.manager.current = loaded("rgb", None, name=None)  # an export written before descriptions
    assert described().startswith("Serving a local export: a dvdm model (target space `rgb`).")
    assert client.get("/docs").status_code == 200
