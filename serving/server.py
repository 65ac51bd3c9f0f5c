"""Running the service with uvicorn: `serve(...)` (what `dvdm serve` calls) and `running_server(...)`, a
real server on a loopback port in a background thread (tests, benchmarks).

    from serving.server import serve
    serve("models:/dvdm@champion", host="127.0.0.1", port=8000)

Loopback by default. Serving another address needs an API key (`ServeSettings.api_key`): without one it is
refused, unless the operator opts out (`allow_no_auth`, e.g. when a proxy in front authenticates); see
`serving.access` for what the key protects.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dvdm.errors import ConfigError
from serving.settings import DEFAULT_MODEL_REF, ServeSettings

log = logging.getLogger("serving.server")
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # -> where a local client reaches them


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, settings: ServeSettings) -> None:
    """Refuse to serve a non-loopback address without an API key, unless the operator said so explicitly."""
    if _is_loopback(host) or settings.api_key is not None:
        return
    if not settings.allow_no_auth:
        raise ConfigError(f"refusing to serve on {host or 'all interfaces'} without an API key: anyone who reaches "
                          f"it could use the service; give one with --api-key-file FILE (or "
                          f"DVDM_SERVE_API_KEY_FILE / DVDM_SERVE_API_KEY), or opt out with --insecure-no-auth "
                          f"(DVDM_SERVE_ALLOW_NO_AUTH=1) when a proxy in front authenticates")
    log.warning("serving: listening on %s without an API key (--insecure-no-auth): whatever can reach it can use "
                "it", host)


def check_model_ref(model_ref: str | Path) -> None:
    """Fail fast on a reference that can never load: malformed, or a local folder without a manifest."""
    from dvdm.model_ref import parse_model_ref

    ref = parse_model_ref(model_ref)
    if ref.path is not None and not (ref.path / "manifest.json").is_file():
        raise FileNotFoundError(f"{ref.path}: not an export folder (no manifest.json); create one with "
                                f"`dvdm export` or give a registry reference such as {DEFAULT_MODEL_REF}")


def log_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's logging config plus the `serving` and `dvdm` loggers on the same console handler, so the
    provider line, model loads and swaps show up next to uvicorn's own lines."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("serving", "dvdm"):
        config["loggers"][name] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _config(model: Any, host: str, port: int, settings: ServeSettings | None, log_level: str,
            access_log: bool, logging_config: dict[str, Any] | None = None):
    import uvicorn

    from serving.app import create_app

    if isinstance(model, (str, Path)):
        check_model_ref(model)
        settings = settings or ServeSettings.from_env()
        if host not in WILDCARD_HOSTS and not _is_loopback(host):  # the name it binds is one clients use
            settings = settings.replace(allowed_hosts=(*settings.allowed_hosts, host))
        check_exposure(host, settings)
        app = create_app(model, settings=settings)
    else:  # an app made by create_app
        app = model
        check_exposure(host, app.state.settings)
    # one worker process: the model lives in it; concurrency is the app's own slot/queue limit
    extra = {} if logging_config is None else {"log_config": logging_config}
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log, workers=1,
                            timeout_graceful_shutdown=30, server_header=False, **extra)
    access = app.state.settings
    log.info("serving: %s; Host names accepted: %s", "API key required" if access.api_key else "no API key",
             "any" if "*" in access.allowed_hosts else ", ".join(("loopback", "the bound address",
                                                                  *access.allowed_hosts)))
    return config


def serve(model_ref: str | Path = DEFAULT_MODEL_REF, host: str = "127.0.0.1", port: int = 8000, *,
          settings: ServeSettings | None = None, log_level: str = "info", access_log: bool = True) -> None:
    """Serve `model_ref` (`models:/dvdm@champion`, `models:/dvdm/<n>` or an export folder) on host:port until
    interrupted (Ctrl-C / SIGTERM: in-flight requests finish first, up to 30 s). `settings`: limits,
    tracking URI, provider, poll interval (default: `ServeSettings.from_env()`, i.e. `DVDM_SERVE_*`)."""
    import uvicorn

    config = _config(model_ref, host, port, settings, log_level, access_log, log_config(log_level))
    uvicorn.Server(config).run()


@contextlib.contextmanager
def running_server(model: Any, *, settings: ServeSettings | None = None, host: str = "127.0.0.1",
                   port: int = 0, ready_timeout: float = 120.0, log_level: str = "warning") -> Iterator[str]:
    """A real uvicorn server in a background thread; yields its base URL (`http://127.0.0.1:<port>`) once
    /readyz answers 200, and stops it (and the thread) on exit. `model`: a model reference (as for `serve`)
    or an app made by `serving.app.create_app`. `port=0`: a free port."""
    import urllib.error
    import urllib.request

    import uvicorn

    config = _config(model, host, port, settings, log_level, access_log=False)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"dvdm-serve-{bound}", daemon=True)
    thread.start()
    local = WILDCARD_HOSTS.get(host, host)
    url = f"http://{'[' + local + ']' if ':' in local else local}:{bound}"
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            if errors or not thread.is_alive():
                raise RuntimeError(f"the server on {url} stopped while starting: {errors[0] if errors else '?'}")
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server on {url} was not ready within {ready_timeout} s")
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=10)
