"""The registered version as an MLflow model (serving/mlflow_model.py): logged with a signature and an input
example, loaded by `mlflow.pyfunc.load_model("models:/dvdm@champion")` from a SQLite registry in a temp dir,
predicting MP4s, refusing bad input with a clear error, never importing torch, and answering a real
`mlflow models serve --env-manager local` request. `dvdm serve` on the same versions: tests/test_serving_swap.py.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")

import httpx  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from team_servers import _script, _stop_group, _wait_http, free_port  # noqa: E402
from test_serving_app import build_tiny_export, png, read_frames  # noqa: E402

from dvdm.runtime.errors import ExportIntegrityError  # noqa: E402
from dvdm.runtime.manifest import load_manifest  # noqa: E402
from dvdm.tracking import registry, runs  # noqa: E402
from dvdm.tracking.errors import TrackingError  # noqa: E402
from serving.mlflow_model import EXAMPLE_PROMPT, register_export  # noqa: E402

URI = "models:/dvdm@champion"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(mlflow_store, tmp_path_factory):
    """(client, export folder, version) of a fresh store whose `dvdm@champion` is the tiny export."""
    export = build_tiny_export(tmp_path_factory)
    client = mlflow_store("pyfunc-registry")
    run_id = runs.start_run(client, runs.experiment_name("pyfunc-test"), "pyfunc")
    mv = register_export(client, run_id, export, metrics={"fvd": 100.0}, alias=registry.CHAMPION)
    runs.end_run(client, run_id)
    return client, export, mv


@pytest.fixture
def tracking(store, monkeypatch):
    """MLflow's global URI pointed at the store, as a user's MLFLOW_TRACKING_URI would (for `models:/`)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store[0].tracking_uri)
    return store


@pytest.fixture(scope="module")
def model(store):
    import mlflow.pyfunc

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", store[0].tracking_uri)
        return mlflow.pyfunc.load_model(URI)


def test_the_version_is_a_logged_pyfunc_model_with_signature_and_example(tracking):
    import mlflow.models

    client, export, mv = tracking
    logged = client.get_logged_model(client.get_run(mv.run_id).outputs.model_outputs[0].model_id)
    assert (logged.status, logged.model_type, mv.source) == ("READY", "onnx-export", logged.artifact_location)
    assert json.loads(logged.tags[registry.MODEL_VERSIONS_TAG]) == [{"name": "dvdm", "version": str(mv.version)}]

    info = mlflow.models.get_model_info(URI)
    assert info.flavors["python_function"]["loader_module"] == "serving.mlflow_model"
    assert info.flavors["python_function"]["data"] == "data/export"
    sig = info.signature.to_dict()
    assert [(c["name"], c["type"], c["required"]) for c in json.loads(sig["inputs"])] == \
        [("image", "binary", True), ("prompt", "string", False)]
    assert [(c["name"], c["type"]) for c in json.loads(sig["outputs"])] == [("video", "binary")]
    sampler = load_manifest(export)["sampler"]
    assert {p["name"]: p["default"] for p in json.loads(sig["params"])} == \
        {"seed": 0, "steps": sampler["steps"], "guidance": sampler["guidance"], "sampler": sampler["name"],
         "format": "mp4"}
    assert info.saved_input_example_info["serving_input_path"] == "serving_input_example.json"


def test_load_by_alias_and_predict_a_video(model, store):
    _, export, _ = store
    clip = load_manifest(export)["clip"]
    example = model.input_example  # the logged example: a red square on grey and a prompt
    assert list(example.columns) == ["image", "prompt"] and example["prompt"][0] == ""  # no text in this model
    out = model.predict(example)
    assert list(out.columns) == ["video"] and len(out) == 1
    assert read_frames(out["video"][0], "mp4").shape == (clip["frames"], clip["height"], clip["width"], 3)

    rows = pd.DataFrame({"image": [png(30, 40, seed=1), png(24, 24, seed=2)], "prompt": [EXAMPLE_PROMPT, None]})
    two = model.predict(rows, params={"seed": 3, "steps": 1, "format": "gif"})
    assert [read_frames(v, "gif").shape[0] for v in two["video"]] == [clip["frames"]] * 2
    again = model.predict(rows.iloc[:1], params={"seed": 3, "steps": 1, "format": "gif"})
    other = model.predict(rows.iloc[:1], params={"seed": 4, "steps": 1, "format": "gif"})
    assert again["video"][0] == two["video"][0] != other["video"][0]  # the seed makes the video
    text = model.predict({"image": [base64.b64encode(png())]}, params={"steps": 1})  # base64 text (`inputs`)
    assert read_frames(text["video"][0], "mp4").shape[0] == clip["frames"]


@pytest.mark.parametrize(("rows", "params", "message"), [
    ({"image": [b"not an image"]}, {}, "not a supported image"),
    ({"image": [b""]}, {}, "the image file is empty"),
    ({"image": [png(), b"GIF89a broken"]}, {}, "row 1: the upload is not a supported image"),
    ({"image": [png(2, 100)]}, {}, "aspect ratio of 50:1"),
    ({"image": [png()], "prompt": ["x" * 1001]}, {}, "prompt is 1001 characters, the limit is 1000"),
    ({"image": [png()]}, {"steps": 0}, r"steps must be in 1\.\.10 for this model, got 0"),
    ({"image": [png()]}, {"format": "avi"}, "format must be one of mp4, gif"),
    ({"image": [png()]}, {"sampler": "euler"}, "sampler must be one of ddim, dpm"),
    ({"image": [png()]}, {"guidance": 50.0}, "guidance must be at most 20.0"),
    ({"prompt": ["no image"]}, {}, r"missing inputs \['image'\]"),
])
def test_bad_input_is_a_clear_invalid_parameter_error(model, rows, params, message):
    with pytest.raises(MlflowException, match=message) as caught:
        model.predict(pd.DataFrame(rows), params=params)
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"  # HTTP 400 from mlflow models serve


def test_loading_and_predicting_never_import_torch(store):
    code = ("import sys, mlflow.pyfunc, pandas as pd\n"
            "import serving.mlflow_model\n"
            "assert 'torch' not in sys.modules, 'importing the module imported torch'\n"
            f"m = mlflow.pyfunc.load_model({URI!r})\n"
            "m.predict(m.input_example, params={'steps': 1})\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'torchvision', 'transformers')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO,
                       env={**os.environ, "MLFLOW_TRACKING_URI": store[0].tracking_uri})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]"


def test_dvdm_serve_downloads_the_export_inside_the_model(store, tmp_path):
    client, export, mv = store
    dst = registry.download_version(client, tmp_path / "serve", registry.CHAMPION)
    assert sorted(p.name for p in dst.iterdir()) == sorted([p.name for p in export.iterdir()] + [registry.VERSION_FILE])
    load_manifest(dst)  # every file's sha256 as exported


def test_a_corrupt_or_missing_export_is_not_registered(store, tmp_path):
    import shutil

    client, export, _ = store
    run_id = runs.start_run(client, runs.experiment_name("pyfunc-test"), "corrupt")
    with pytest.raises(TrackingError, match="no exported model folder"):
        register_export(client, run_id, tmp_path / "missing")
    corrupt = tmp_path / "export"
    shutil.copytree(export, corrupt)
    (corrupt / "denoiser.onnx").write_bytes(b"not the exported graph")
    with pytest.raises(ExportIntegrityError, match="denoiser.onnx: size"):
        register_export(client, run_id, corrupt)
    failed = client.get_logged_model(client.get_run(run_id).outputs.model_outputs[0].model_id)
    assert failed.status == "FAILED" and len(client.search_model_versions("name='dvdm'")) == 1


def test_mlflow_models_serve_answers_a_request(store, tmp_path):
    """`mlflow models serve -m models:/dvdm@champion --env-manager local`: the logged serving example gets
    a playable MP4 (base64 in the JSON), a non-image a 400 naming the problem."""
    client, export, mv = store
    import mlflow.artifacts

    example = Path(mlflow.artifacts.download_artifacts(f"{mv.source}/serving_input_example.json",
                                                       dst_path=str(tmp_path)))
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": client.tracking_uri, "DVDM_SERVE_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # uvicorn
    with log.open("w") as out:
        server = subprocess.Popen(_script("mlflow") + ["models", "serve", "-m", URI, "--env-manager", "local",
                                                        "-h", "127.0.0.1", "-p", str(port)],
                                  cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/ping", server, log, "mlflow models serve", timeout=180)
        r = httpx.post(f"{url}/invocations", content=example.read_bytes(),
                       headers={"Content-Type": "application/json"}, timeout=120)
        assert r.status_code == 200, r.text[:2000]
        video = base64.b64decode(r.json()["predictions"][0]["video"])
        assert read_frames(video, "mp4").shape[0] == load_manifest(export)["clip"]["frames"]
        bad = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"hello").decode()]]}}
        r = httpx.post(f"{url}/invocations", json=bad, timeout=60)
        assert r.status_code == 400 and "not a supported image" in r.json()["message"]
    finally:
        _stop_group(server)
