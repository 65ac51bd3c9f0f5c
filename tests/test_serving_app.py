"""The HTTP service (serving.app / serving.server) on a tiny real export: every route, every bad input,
the concurrency limit, a real uvicorn server, and no torch in the serving process.

The export comes from the real stages (ingest -> train-diffusion, 1 step on 4x16x16 synthetic clips, no
text) and `dvdm export`; it is built once per session under pytest's base temp (~5 s).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")
pytest.importorskip("python_multipart", reason="pip install python-multipart (FastAPI form uploads)")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from serving.app import create_app, decode_image  # noqa: E402
from serving.errors import InvalidRequest  # noqa: E402
from dvdm.model_ref import parse_model_ref  # noqa: E402
from serving.server import running_server, serve  # noqa: E402
from serving.settings import ServeSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_UNET = {"base_channels": 8, "channel_mults": [1, 2], "spatial_attention": [False, False], "attention_heads": 1,
             "attention_head_dim": 8, "image_feature_channels": 4, "image_encoder_base": 8, "image_encoder_blocks": 1}


def build_tiny_export(tmp_path_factory) -> Path:
    """A real export (rgb, 4x16x16, 10 timesteps, no text), built once per session and shared."""
    return export_tiny_model(tmp_path_factory.getbasetemp() / "serving-tiny-model")


def export_tiny_model(root: Path) -> Path:
    """`root`/export: the tiny model above, trained and exported under `root` unless it is already there
    (benchmarks/probe_service.py serves it too)."""
    export = root / "export"
    if (export / "manifest.json").is_file():
        return export
    import torch

    from dvdm.config import IngestParams, TrainParams
    from dvdm.export import export_model
    from dvdm.stages.ingest import run_ingest
    from dvdm.stages.train_diffusion import run_train_diffusion

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shutil.rmtree(root, ignore_errors=True)
        run_ingest(IngestParams(frames=4, height=16, width=16,
                                options={"num_train": 2, "num_val": 1, "num_test": 1, "seed": 3}), root / "ingested")
        run_train_diffusion(TrainParams(space="rgb", steps=1, batch_size=2, sample_steps=1, log_every=1, text=False,
                                        unet=dict(TINY_UNET), diffusion={"num_timesteps": 10}),
                            root / "ingested", root / "rgb")
        export_model(root / "rgb", export, steps=2, guidance=1.0, threads=1, parity_steps=1, parity_samples=1)
    finally:
        torch.set_num_threads(threads)
    return export


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    return build_tiny_export(tmp_path_factory)


SETTINGS = ServeSettings(provider="cpu", threads=1, max_upload_bytes=20_000, max_pixels=48 * 48, max_steps=5,
                         max_prompt_chars=100, max_guidance=10.0, max_concurrency=1, max_queue=2, retry_after=3)


def png(h: int = 30, w: int = 40, seed: int = 0, fmt: str = "PNG") -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, fmt)
    return buf.getvalue()


def wait_ready(client, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the model did not load"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(tiny_export):
    with TestClient(create_app(tiny_export, settings=SETTINGS)) as c:
        wait_ready(c)
        yield c


def post(client, image: bytes | None = None, ctype: str = "image/png", **fields):
    files = {"image": ("upload.png", png() if image is None else image, ctype)}
    data = {"prompt": "a red circle moves up", "steps": "1", **{k: str(v) for k, v in fields.items()}}
    return client.post("/v1/generate", files=files, data=data)


def read_frames(data: bytes, suffix: str) -> np.ndarray:
    import av

    with av.open(io.BytesIO(data), format={"mp4": "mp4", "gif": "gif"}[suffix]) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


# ------------------------------------------------------------------------------------------ settings / refs
def test_settings_from_env_and_validation():
    env = {"DVDM_SERVE_MAX_UPLOAD_BYTES": "1234", "DVDM_SERVE_POLL_INTERVAL": "2.5", "DVDM_SERVE_WARMUP": "no",
           "DVDM_SERVE_THREADS": "", "DVDM_SERVE_PROVIDER": "cpu"}
    s = ServeSettings.from_env(env, max_steps=7, tracking_uri=None)
    assert (s.max_upload_bytes, s.poll_interval, s.warmup, s.threads, s.provider, s.max_steps) == \
        (1234, 2.5, False, None, "cpu", 7)
    assert ServeSettings.from_env({}) == ServeSettings()
    with pytest.raises(ValueError, match="DVDM_SERVE_MAX_PIXELS='lots' is not a valid int"):
        ServeSettings.from_env({"DVDM_SERVE_MAX_PIXELS": "lots"})
    with pytest.raises(ValueError, match="max_concurrency must be >= 1"):
        ServeSettings(max_concurrency=0)
    with pytest.raises(ValueError, match="guidance range"):
        ServeSettings(min_guidance=3.0, max_guidance=1.0)
    with pytest.raises(ValueError, match="unknown serve settings: nope"):
        ServeSettings.from_env({}, nope=1)


def test_model_refs(tmp_path):
    r = parse_model_ref("models:/dvdm@champion")
    assert (r.name, r.alias, r.version, r.follows_alias, r.path) == ("dvdm", "champion", None, True, None)
    r = parse_model_ref("models:/dvdm/3")
    assert (r.name, r.alias, r.version, r.follows_alias) == ("dvdm", None, "3", False)
    assert parse_model_ref(tmp_path).path == tmp_path.resolve() and not parse_model_ref(tmp_path).is_registry
    for bad in ("models:/dvdm", "models:/dvdm@", "models:/../x@a", "models:/dvdm/3/x", "s3://bucket/model", ""):
        with pytest.raises(ValueError):
            parse_model_ref(bad)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        serve(tmp_path / "missing")
    with pytest.raises(ValueError, match="registry references look like"):
        serve("models:/dvdm@")


# ------------------------------------------------------------------------------------------ routes
def test_health_ready_model_docs_and_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "version": None, "label": "local"}
    m = client.get("/v1/model").json()
    assert m["label"] == "local" and m["version"] is None and m["provider"] == "CPUExecutionProvider"
    assert m["manifest"]["space"] == "rgb" and (m["manifest"]["frames"], m["manifest"]["height"]) == (4, 16)
    assert m["defaults"] == {"steps": 2, "guidance": 1.0, "seed": 0, "format": "mp4"}
    assert m["limits"]["max_steps"] == 5 and m["limits"]["max_pixels"] == 48 * 48
    assert m["follow"]["follows_alias"] is False and m["follow"]["last_error"] is None
    spec = client.get("/openapi.json").json()
    form = spec["paths"]["/v1/generate"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in form
    assert {"/healthz", "/readyz", "/v1/model"} <= set(spec["paths"])
    for docs in ("/docs", "/redoc"):  # API docs whose scripts come from this server, not a CDN
        page = client.get(docs)
        assert page.status_code == 200 and "cdn." not in page.text and "https://" not in page.text
        for asset in re.findall(r'(?:src|href)="(/docs-assets/[^"]+)"', page.text):
            assert client.get(asset).status_code == 200, asset
    assert "/docs-assets/swagger-ui-bundle.js" in client.get("/docs").text
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'id="generate-form"' in page.text and "/static/app.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from elsewhere: works offline
    for asset in ("/static/app.js", "/static/style.css"):
        r = client.get(asset)
        assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/../app.py").status_code == 404


def test_generate_mp4_and_gif(client):
    r = post(client, seed=5)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    assert (r.headers["x-model-version"], r.headers["x-seed"], r.headers["x-steps"], r.headers["x-frames"]) == \
        ("local", "5", "1", "4")
    assert r.headers["content-disposition"] == 'inline; filename="dvdm-local-seed5.mp4"'
    frames = read_frames(r.content, "mp4")
    assert frames.shape == (4, 16, 16, 3)
    r2 = post(client, seed=5, format="gif", steps=2)
    assert r2.status_code == 200 and r2.headers["content-type"] == "image/gif" and r2.content[:6] == b"GIF89a"
    assert read_frames(r2.content, "gif").shape == (4, 16, 16, 3)
    # defaults from the manifest when steps/guidance are not sent; an empty prompt is allowed
    r3 = client.post("/v1/generate", files={"image": ("x", png(16, 16), "application/octet-stream")},
                     data={"prompt": ""})
    assert r3.status_code == 200 and r3.headers["x-steps"] == "2" and r3.headers["x-guidance"] == "1.0"


def _bmp_without_extension() -> bytes:
    return png(20, 20, fmt="BMP")


BAD = [  # (case id, request kwargs, status, detail fragment)
    ("not-an-image", dict(image=b"hello, I am text"), 415, "not a supported image"),
    ("svg", dict(image=b"<svg xmlns='http://www.w3.org/2000/svg'/>", ctype="image/svg+xml"), 415, "not a supported"),
    ("tiff-not-allowed", dict(image=png(fmt="TIFF"), ctype="image/tiff"), 415, "not a supported image"),
    ("truncated-png", dict(image=png()[:200]), 422, "could not be decoded"),
    ("empty-file", dict(image=b""), 422, "empty"),
    ("too-many-pixels", dict(image=png(60, 60)), 413, "60x60 = 3600 pixels"),
    ("too-many-bytes", dict(image=png(48, 48) + b"\0" * 20_000), 413, "exceeds the limit of 20000 bytes"),
    ("part-declared-text", dict(ctype="text/plain"), 415, "declared as text/plain"),
    ("negative-steps", dict(steps=-1), 422, "steps must be in 1..5"),
    ("zero-steps", dict(steps=0), 422, "steps must be in 1..5"),
    ("huge-steps", dict(steps=10 ** 9), 422, "steps must be in 1..5"),
    ("float-steps", dict(steps="1.5"), 422, "steps:"),
    ("text-steps", dict(steps="many"), 422, "steps:"),
    ("negative-guidance", dict(guidance=-1), 422, "guidance must be in [0.0, 10.0]"),
    ("huge-guidance", dict(guidance=1e9), 422, "guidance must be in"),
    ("nan-guidance", dict(guidance="nan"), 422, "guidance"),
    ("negative-seed", dict(seed=-1), 422, "seed must be in"),
    ("huge-seed", dict(seed=2 ** 64), 422, "seed must be in"),
    ("giant-prompt", dict(prompt="x" * 101), 422, "prompt is 101 characters, the limit is 100"),
    ("bad-format", dict(format="avi"), 422, "format: Input should be 'mp4' or 'gif'"),
]


@pytest.mark.parametrize("kwargs, status, fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_inputs_are_4xx_and_the_server_keeps_serving(client, kwargs, status, fragment):
    r = post(client, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert fragment in r.json()["detail"], r.json()
    assert post(client).status_code == 200


def test_missing_fields_and_wrong_body_types(client):
    r = client.post("/v1/generate", data={"prompt": "no image"}, files={"other": ("x", b"y", "text/plain")})
    assert r.status_code == 422 and "image: Field required" in r.json()["detail"]
    assert r.json()["errors"][0]["loc"] == ["body", "image"]
    r = client.post("/v1/generate", json={"prompt": "x", "image": "aGVsbG8="})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/v1/generate", data={"prompt": "x"})  # urlencoded
    assert r.status_code == 415
    r = client.post("/v1/generate", content=b"", headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code in (400, 422)
    r = client.post("/v1/generate", content=b"--xyz\r\ngarbage", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400  # no boundary
    r = client.post("/v1/generate", content=b"x" * 200_000,
                    headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "request body of 200000 bytes exceeds" in r.json()["detail"]
    # a lying / chunked body is cut off while it streams in
    r = client.post("/v1/generate", content=iter([b"--xyz\r\n", b"x" * 200_000]),
                    headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and r.json()["detail"].startswith("request body exceeds the limit")
    assert client.get("/v1/generate").status_code == 405
    assert post(client).status_code == 200


def test_decode_image_direct():
    rgba = io.BytesIO()
    Image.new("RGBA", (5, 3), (10, 20, 30, 128)).save(rgba, "PNG")
    out = decode_image(rgba.getvalue(), 100)
    assert out.shape == (3, 5, 3) and out.dtype == np.uint8 and tuple(out[0, 0]) == (10, 20, 30)
    grey = io.BytesIO()
    Image.new("L", (4, 4), 77).save(grey, "JPEG")
    assert decode_image(grey.getvalue(), 100).shape == (4, 4, 3)
    assert decode_image(_bmp_without_extension(), 10_000).shape == (20, 20, 3)
    with pytest.raises(InvalidRequest, match="pixels"):
        decode_image(png(11, 10), 100)


def test_not_ready_until_a_model_loads(tiny_export, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_export, broken)
    (broken / "denoiser.onnx").write_bytes(b"tampered")
    with TestClient(create_app(broken, settings=SETTINGS.replace(poll_interval=0.1))) as c:
        assert c.get("/healthz").status_code == 200
        deadline = time.monotonic() + 30
        while "refusing to load" not in (r := c.get("/readyz")).text:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.status_code == 503 and r.headers["retry-after"] == "3" and "refusing to load" in r.json()["detail"]
        assert c.get("/v1/model").status_code == 503
        assert post(c).status_code == 503
        # the export is repaired: the retry loop loads it
        shutil.copyfile(tiny_export / "denoiser.onnx", broken / "denoiser.onnx")
        wait_ready(c)
        assert post(c).status_code == 200


# ------------------------------------------------------------------------------------------ real server
class Gate:
    """Wraps a pipeline's generate so a request blocks inside it until released."""

    def __init__(self, pipe):
        self.entered, self.release, self.calls = threading.Event(), threading.Event(), 0
        self.original = pipe.generate

        def gated(*args, **kwargs):
            self.calls += 1
            self.entered.set()
            assert self.release.wait(60), "gate never released"
            return self.original(*args, **kwargs)

        pipe.generate = gated


def http_post(url: str, timeout: float = 60.0, **fields) -> httpx.Response:
    data = {"prompt": "a circle", "steps": "1", **{k: str(v) for k, v in fields.items()}}
    return httpx.post(f"{url}/v1/generate", files={"image": ("a.png", png(), "image/png")}, data=data,
                      timeout=timeout)


def test_concurrency_limit_answers_429_and_the_loop_stays_responsive(tiny_export):
    app = create_app(tiny_export, settings=SETTINGS.replace(max_concurrency=1, max_queue=1))
    with running_server(app) as url:
        gate = Gate(app.state.manager.current.pipeline)
        results: dict[str, httpx.Response] = {}
        first = threading.Thread(target=lambda: results.__setitem__("a", http_post(url, seed=1)))
        first.start()
        assert gate.entered.wait(30)
        queued = threading.Thread(target=lambda: results.__setitem__("b", http_post(url, seed=2)))
        queued.start()
        deadline = time.monotonic() + 30
        while app.state.admission.admitted < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # one running + one waiting: the next is turned away at once
        r = http_post(url, seed=3)
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
        assert "1 generation(s) running and 1 waiting" in r.json()["detail"]
        started = time.perf_counter()  # the event loop is free while the generation runs in a thread
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"{url}/v1/model", timeout=5).status_code == 200
        assert time.perf_counter() - started < 2.0
        gate.release.set()
        first.join(60)
        queued.join(60)
        assert results["a"].status_code == 200 and results["b"].status_code == 200
        assert results["a"].headers["x-seed"] == "1" and results["b"].headers["x-seed"] == "2"
        assert app.state.admission.admitted == 0 and app.state.admission.running == 0
        assert http_post(url).status_code == 200


def test_real_server_in_a_subprocess_never_imports_torch(tiny_export):
    """uvicorn on a free loopback port in a fresh process: every route over real HTTP, then sys.modules."""
    code = f"""
import io, json, sys, urllib.request
import httpx, numpy as np
from PIL import Image
from serving.server import running_server
from serving.settings import ServeSettings
buf = io.BytesIO(); Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(buf, "PNG")
out = {{}}
with running_server({str(tiny_export)!r}, settings=ServeSettings(provider="cpu", threads=1)) as url:
    out["host"] = url.split("//")[1].split(":")[0]
    for path in ("/healthz", "/readyz", "/v1/model", "/", "/openapi.json", "/static/app.js"):
        out[path] = httpx.get(url + path, timeout=30).status_code
    r = httpx.post(url + "/v1/generate", files={{"image": ("a.png", buf.getvalue(), "image/png")}},
                   data={{"prompt": "x", "steps": "1", "format": "mp4"}}, timeout=60)
    out["generate"] = [r.status_code, r.headers.get("content-type"), len(r.content)]
    out["bad"] = httpx.post(url + "/v1/generate", files={{"image": ("a.png", b"nope", "image/png")}},
                            data={{"prompt": "x"}}, timeout=30).status_code
out["torch"] = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(json.dumps(out))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["host"] == "127.0.0.1"
    assert all(out[p] == 200 for p in ("/healthz", "/readyz", "/v1/model", "/", "/openapi.json", "/static/app.js"))
    assert out["generate"][:2] == [200, "video/mp4"] and out["generate"][2] > 100
    assert out["bad"] == 415
    assert out["torch"] == [], f"the serving process imported torch: {out['torch']}"
