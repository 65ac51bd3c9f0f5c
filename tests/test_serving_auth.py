"""Access control of the HTTP service (`serving.access`, issue 13 item 7) on the tiny real export of
test_serving_app: the API key (401 without or with a wrong one, 200 with it, the open routes), the refusal
to serve a non-loopback address without a key (and the explicit opt-out), the Host check against DNS
rebinding, cross-site POSTs, and `dvdm serve`'s options. The browser side (the page sends the token, a
cross-site form is refused) is in test_serving_browser.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")
pytest.importorskip("python_multipart", reason="pip install python-multipart (FastAPI form uploads)")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from test_serving_app import REPO, SETTINGS, build_tiny_export, png, wait_ready  # noqa: E402

from dvdm.errors import ConfigError  # noqa: E402
from serving.app import create_app  # noqa: E402
from serving.server import running_server  # noqa: E402
from serving.settings import ServeSettings  # noqa: E402

TOKEN = "test-token-0123456789-abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return build_tiny_export(tmp_path_factory)


def count_generations(app) -> list[int]:
    """A list that grows by one each time the loaded pipeline generates (is compute spent?)."""
    calls: list[int] = []
    pipe = app.state.manager.current.pipeline
    original = pipe.generate

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    pipe.generate = counted
    return calls


def generate(client, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/v1/generate", files={"image": ("a.png", png(16, 16), "image/png")},
                       data={"prompt": "a circle", "steps": "1"}, headers=headers or {})


@pytest.fixture(scope="module")
def locked(export):
    """A service with an API key, its generation calls counted."""
    app = create_app(export, settings=SETTINGS.replace(api_key=TOKEN))
    with TestClient(app) as client:
        wait_ready(client)
        client.calls = count_generations(app)
        yield client


# ------------------------------------------------------------------------------------------ settings
def test_api_key_from_env_file_or_argument_and_never_shown(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(f"\n  {TOKEN}  \n\n")
    assert ServeSettings.from_env({"DVDM_SERVE_API_KEY": TOKEN}).api_key == TOKEN
    assert ServeSettings.from_env({"DVDM_SERVE_API_KEY_FILE": str(key_file)}).api_key == TOKEN
    assert ServeSettings.from_env({}, api_key_file=key_file).api_key == TOKEN
    # an explicit file (the CLI's --api-key-file) wins over the environment's key
    assert ServeSettings.from_env({"DVDM_SERVE_API_KEY": "other-token-0123456789"}, api_key_file=key_file).api_key \
        == TOKEN
    assert ServeSettings.from_env({}).api_key is None
    assert TOKEN not in repr(ServeSettings(api_key=TOKEN))
    with pytest.raises(ValueError, match="not both"):
        ServeSettings.from_env({"DVDM_SERVE_API_KEY": TOKEN, "DVDM_SERVE_API_KEY_FILE": str(key_file)})
    with pytest.raises(ValueError, match="not both"):
        ServeSettings.from_env({}, api_key=TOKEN, api_key_file=key_file)
    with pytest.raises(ValueError, match=r"API key file .*missing: no such file"):
        ServeSettings.from_env({}, api_key_file=tmp_path / "missing")
    (tmp_path / "two").write_text("a" * 20 + "\n" + "b" * 20 + "\n")
    with pytest.raises(ValueError, match="alone on one line, found 2"):
        ServeSettings.from_env({}, api_key_file=tmp_path / "two")
    with pytest.raises(ValueError, match="at least 16 printable ASCII") as short:
        ServeSettings(api_key="guessable")
    assert "guessable" not in str(short.value)
    with pytest.raises(ValueError, match="without spaces"):
        ServeSettings(api_key="a token with spaces in it")


def test_allowed_hosts_and_opt_out_settings():
    s = ServeSettings.from_env({"DVDM_SERVE_ALLOWED_HOSTS": "Dvdm.Example.org., 10.0.0.5, [fe80::1]",
                                "DVDM_SERVE_ALLOW_NO_AUTH": "1"})
    assert s.allowed_hosts == ("dvdm.example.org", "10.0.0.5", "fe80::1") and s.allow_no_auth is True
    assert ServeSettings(allowed_hosts="a.example,*").allowed_hosts == ("a.example", "*")
    assert ServeSettings().allowed_hosts == () and ServeSettings().allow_no_auth is False
    for bad in ("dvdm.example.org:443", "https://dvdm.example.org", "a/b", "[::1]:80", "two words"):
        with pytest.raises(ValueError, match="without scheme or port"):
            ServeSettings(allowed_hosts=(bad,))


# ------------------------------------------------------------------------------------------ the API key
def test_api_key_is_required_on_every_route_but_the_open_ones(locked):
    for path in ("/healthz", "/readyz", "/", "/static/app.js", "/docs", "/redoc", "/openapi.json"):
        assert locked.get(path).status_code == 200, path
    r = locked.get("/v1/model")
    assert r.status_code == 401 and r.headers["content-type"] == "application/json"
    assert r.headers["www-authenticate"] == 'Bearer realm="dvdm"'
    assert "Authorization: Bearer <token>" in r.json()["detail"]
    for wrong in (f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, "Bearer ",
                  "Bearer é".encode()):
        r = locked.get("/v1/model", headers={"Authorization": wrong})
        assert r.status_code == 401, wrong
        assert r.headers["www-authenticate"].startswith('Bearer realm="dvdm"')
    r = locked.get("/v1/model", headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert r.json() == {"detail": "the access token is not valid"}
    assert r.headers["www-authenticate"] == 'Bearer realm="dvdm", error="invalid_token"'
    assert locked.get("/v1/model", headers=BEARER).status_code == 200
    assert locked.get("/v1/model", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert locked.get("/no-such-route").status_code == 401  # protected unless listed as open
    assert locked.get("/no-such-route", headers=BEARER).status_code == 404


def test_generate_without_the_key_spends_nothing(locked):
    before = len(locked.calls)
    r = generate(locked)
    assert r.status_code == 401 and "access token" in r.json()["detail"]
    r = generate(locked, {"Authorization": "Bearer wrong-token-0123456789"})
    assert r.status_code == 401
    assert len(locked.calls) == before
    r = generate(locked, BEARER)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    assert len(locked.calls) == before + 1


def test_openapi_documents_the_bearer_scheme(locked):
    spec = locked.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "the service's API key (DVDM_SERVE_API_KEY)"}
    assert spec["paths"]["/v1/generate"]["post"]["security"] == [{"bearer": []}]
    assert "401" in spec["paths"]["/v1/model"]["get"]["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]


# ------------------------------------------------------------------------------------------ binding
def test_non_loopback_bind_is_refused_without_a_key_unless_opted_out(export):
    with pytest.raises(ConfigError, match="refusing to serve on 0.0.0.0 without an API key"):
        with running_server(create_app(export, settings=SETTINGS), host="0.0.0.0"):
            pass
    with running_server(create_app(export, settings=SETTINGS.replace(allow_no_auth=True)), host="0.0.0.0") as url:
        assert url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{url}/v1/model", timeout=10).status_code == 200
    with running_server(create_app(export, settings=SETTINGS.replace(api_key=TOKEN)), host="0.0.0.0") as url:
        assert httpx.get(f"{url}/v1/model", timeout=10).status_code == 401
        assert httpx.get(f"{url}/v1/model", headers=BEARER, timeout=10).status_code == 200


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVDM_SERVE_")}
    return subprocess.run([sys.executable, "-m", "dvdm.cli", "serve", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_refuses_an_exposed_bind_and_a_bad_key_file_in_one_line(export, tmp_path):
    r = _cli("--model", str(export), "--host", "0.0.0.0", "--port", "0")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: refusing to serve on 0.0.0.0 without an API key")
    assert "--api-key-file" in lines[0] and "--insecure-no-auth" in lines[0]
    r = _cli("--model", str(export), "--api-key-file", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stderr.strip() == f"error: API key file {tmp_path / 'nope'}: no such file"
    (tmp_path / "short").write_text("short\n")
    r = _cli("--model", str(export), "--api-key-file", str(tmp_path / "short"))
    assert r.returncode == 2 and r.stderr.startswith("error: invalid serve settings: api_key must be at least 16")
    assert "short\n" not in r.stderr.replace("error:", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_with_a_key_file(export, tmp_path):
    """`dvdm serve --api-key-file`: a real process, the key read from the file (never on the command line)."""
    key_file = tmp_path / "key"
    key_file.write_text(TOKEN + "\n")
    key_file.chmod(0o600)
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DVDM_SERVE_")}, "OMP_NUM_THREADS": "1",
           "DVDM_SERVE_PROVIDER": "cpu", "DVDM_SERVE_WARMUP": "0"}
    args = [sys.executable, "-m", "dvdm.cli", "serve", "--model", str(export), "--port", str(port),
            "--api-key-file", str(key_file), "--allowed-host", "dvdm.example.org"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "dvdm serve did not become ready"
            time.sleep(0.1)
        assert httpx.get(f"{url}/v1/model", timeout=10).status_code == 401
        assert httpx.get(f"{url}/v1/model", headers=BEARER, timeout=10).status_code == 200
        named = {**BEARER, "Host": "dvdm.example.org"}
        assert httpx.get(f"{url}/v1/model", headers=named, timeout=10).status_code == 200
        assert httpx.get(f"{url}/v1/model", headers={**BEARER, "Host": "elsewhere.example"},
                         timeout=10).status_code == 400
        assert TOKEN not in " ".join(proc.args)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert "API key required" in output, output


# ------------------------------------------------------------------------------------------ Host header
def test_host_header_must_name_this_server(export):
    app = create_app(export, settings=SETTINGS.replace(allowed_hosts=("dvdm.example.org",)))
    with TestClient(app) as client:  # its connections arrive at "testserver": the bound address here
        wait_ready(client)
        calls = count_generations(app)
        for host in ("localhost:8000", "127.0.0.1", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST", "testserver",
                     "dvdm.example.org", "DVDM.example.org.:443"):
            assert client.get("/v1/model", headers={"Host": host}).status_code == 200, host
        for host in ("rebind.attacker.example", "rebind.attacker.example:8000", "127.0.0.1.nip.io",
                     "localhost.attacker.example", "dvdm.example.org.attacker.example", "[::1", "a b", ""):
            r = client.get("/v1/model", headers={"Host": host})
            assert r.status_code == 400, host
            assert "is not a name of this server" in r.json()["detail"], host
        assert client.get("/healthz", headers={"Host": "rebind.attacker.example"}).status_code == 400
        assert generate(client, {"Host": "rebind.attacker.example"}).status_code == 400
        assert calls == []
    with TestClient(create_app(export, settings=SETTINGS.replace(allowed_hosts=("*",)))) as client:
        assert client.get("/healthz", headers={"Host": "anything.example"}).status_code == 200


def test_dns_rebinding_against_a_real_loopback_server(export):
    """A page on rebind.attacker.example whose name now resolves to 127.0.0.1 sends its own name as Host."""
    app = create_app(export, settings=SETTINGS)
    with running_server(app) as url:
        calls = count_generations(app)
        port = url.rsplit(":", 1)[1]
        for path in ("/v1/model", "/", "/readyz"):
            r = httpx.get(url + path, headers={"Host": f"rebind.attacker.example:{port}"}, timeout=10)
            assert r.status_code == 400 and r.headers["x-content-type-options"] == "nosniff", path
        r = httpx.post(f"{url}/v1/generate", headers={"Host": f"rebind.attacker.example:{port}"},
                       files={"image": ("a.png", png(16, 16), "image/png")}, data={"steps": "1"}, timeout=30)
        assert r.status_code == 400 and calls == []
        assert httpx.get(f"{url}/v1/model", timeout=10).status_code == 200


# ------------------------------------------------------------------------------------------ cross-site POSTs
@pytest.mark.parametrize("key", [None, TOKEN], ids=["no-key", "with-key"])
def test_cross_site_posts_are_refused_before_any_work(export, key):
    app = create_app(export, settings=SETTINGS.replace(api_key=key) if key else SETTINGS)
    auth = BEARER if key else {}
    with TestClient(app) as client:
        wait_ready(client)
        calls = count_generations(app)
        for headers in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site", "Origin": "http://other.testserver"},
                        {"Origin": "null"}, {"Origin": "http://testserver:8080"},
                        {"Sec-Fetch-Site": "cross-site", "Origin": "http://testserver"}):
            r = generate(client, {**auth, **headers})
            assert r.status_code == 403, headers
            assert r.json()["detail"].startswith("cross-origin POST refused"), r.json()
        assert calls == []
        # this server's own page, a browser's address bar, and clients that are not browsers
        for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"},
                        {"Origin": "http://testserver"}, {"Sec-Fetch-Site": "none"}, {}):
            assert generate(client, {**auth, **headers}).status_code == 200, headers
        assert len(calls) == 4
        # reading is left to the browser's same-origin policy (no CORS headers are sent)
        r = client.get("/v1/model", headers={**auth, "Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
