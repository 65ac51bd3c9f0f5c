"""The serve role on its own: a clean venv gets only `pip install "<project>[serve,cpu]"` (dependencies
resolved from the package index, no --no-deps), has no torch, Prefect, DVC or numba, and `dvdm serve`
there follows `models:/dvdm@champion` in a real SQLite registry and answers a generation over HTTP.

The export and the registry store are made with this (full) venv; the clean venv sees neither this venv
nor the source tree (it installs a copy of the project, runs from a temp folder). pip's cache keeps the
install short after the first run; the test skips only when pip cannot reach a package index.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")

import httpx  # noqa: E402
from test_serving_app import build_tiny_export, png, read_frames  # noqa: E402
from test_serving_swap import NAME, register  # noqa: E402

from dvdm.tracking import registry  # noqa: E402
from dvdm.tracking.store import open_client  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRAINING_ONLY = ("torch", "prefect", "dvc", "numba")  # what the serve role must not install
# what pip prints when it cannot reach an index (then the test skips instead of failing)
UNREACHABLE = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
               "Network is unreachable", "ConnectTimeoutError", "Read timed out", "ProxyError")


def copy_project(dest: Path) -> Path:
    """What the distribution is built from (pyproject, readme, license, the packages), without caches or
    build output, so the install neither writes into the shared tree nor picks up anything else."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    meta = project["project"]
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    dest.mkdir()
    for name in ["pyproject.toml", meta["readme"], *meta.get("license-files", [])]:
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for pattern in patterns:
        for package in REPO.glob(pattern):
            if package.is_dir() and (package / "__init__.py").is_file():
                shutil.copytree(package, dest / package.name, ignore=ignore)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment minus anything that would let the clean venv see this venv or the tree."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def serve_venv(tmp_path_factory):
    """A fresh venv with the project installed as `[serve,cpu]` only: its bin folder. Deleted afterwards
    (~0.5 GB)."""
    root = tmp_path_factory.mktemp("serve-venv")
    source = copy_project(root / "src")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                        "--no-compile", "--progress-bar", "off",  # modules compile on first import instead
                        f"{source}[serve,cpu]"], capture_output=True, text=True, timeout=900,
                       cwd=root, env=clean_env())
    if r.returncode != 0:
        output = r.stdout + r.stderr
        if any(marker in output for marker in UNREACHABLE):
            pytest.skip(f"pip cannot reach a package index: {output.strip().splitlines()[-1][:300]}")
        raise AssertionError(f"pip install [serve,cpu] failed:\n{output[-4000:]}")
    yield venv / "bin"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory) -> str:
    """The tracking URI of a fresh SQLite store whose `dvdm@champion` is version 1 (the tiny export)."""
    export = build_tiny_export(tmp_path_factory)
    uri = f"sqlite:///{tmp_path_factory.mktemp('serve-install-registry') / 'mlflow.db'}"
    client = open_client(uri)
    assert register(client, export, "install", 100.0) == "1"
    registry.set_alias(client, registry.CHAMPION, "1", NAME)
    return uri


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, server: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, f"dvdm serve exited with {server.returncode}:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not ready within {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def test_serve_role_installs_without_training_packages(serve_venv, tmp_path):
    code = ("import importlib.util, sys\n"
            "import dvdm.cli, serving.app, serving.server, dvdm.tracking.registry, dvdm.tracking.store\n"
            f"print([m for m in {TRAINING_ONLY!r} if importlib.util.find_spec(m) is not None or m in sys.modules])")
    r = subprocess.run([str(serve_venv / "python"), "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path, env=clean_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"the serve role installed training packages: {r.stdout.strip()}"


def test_serve_role_answers_a_request_from_the_registry(serve_venv, champion_store, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    out = log.open("w")
    server = subprocess.Popen([str(serve_venv / "dvdm"), "serve", "--model", f"models:/{NAME}@champion",
                               "--port", str(port), "--provider", "cpu", "--poll-interval", "0"],
                              cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                              env=clean_env(MLFLOW_TRACKING_URI=champion_store, DVDM_SERVE_THREADS="1"))
    try:
        wait_ready(url, server, log)
        r = httpx.post(f"{url}/v1/generate", files={"image": ("a.png", png(), "image/png")},
                       data={"prompt": "a circle", "steps": "1", "format": "mp4"}, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "video/mp4"
        assert (r.headers["x-model-name"], r.headers["x-model-version"], r.headers["x-model-alias"]) == \
            (NAME, "1", "champion")
        frames = read_frames(r.content, "mp4")
        assert frames.shape[0] == int(r.headers["x-frames"]) and frames.shape[-1] == 3
        assert httpx.get(url, timeout=30).status_code == 200  # the web page ships in the wheel
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn's graceful shutdown
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        out.close()
    # 130: the CLI's exit status for an interrupt, after uvicorn has shut the app down
    assert server.returncode in (0, 130) and "Application shutdown complete" in log.read_text(), \
        log.read_text()[-3000:]
