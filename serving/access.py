"""Who may use the service, checked before anything of a request is read (ASGI middleware, outermost):

1. the Host header names this server: loopback names, the address the connection arrived at, or a name in
   `allowed_hosts` (else 400). A DNS-rebinding page reaches a loopback server under its own host name, so
   this keeps it out;
2. a state-changing request (POST, ...) comes from this server's own origin when a browser sent it
   (`Sec-Fetch-Site`, else `Origin` against `Host`, as Go's `http.CrossOriginProtection`; else 403), so a
   cross-site form cannot spend compute even on a server without a token. Clients that send neither
   header (curl, scripts) are not browsers and pass;
3. with an API key, every route except the open ones (health probes, the web page and the API docs, none of
   which computes or reveals more than the OpenAPI schema) needs `Authorization: Bearer <key>`, compared in
   constant time (else 401 + `WWW-Authenticate`).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import JSONResponse

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_HOST = "*"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
OPEN_PREFIXES = ("/static/", "/docs-assets/")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BROWSER_SAME_ORIGIN = (b"same-origin", b"none")  # none: the user opened the URL themselves
REALM = 'Bearer realm="dvdm"'
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def host_name(value: str) -> str | None:
    """The host of a Host header, socket address or allowed-hosts entry: lower case, without port, brackets
    or trailing dot (IPv6 in its compressed form). None when it is not a host name or IP address."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6] or [v6]:port
        inner, closed, rest = value[1:].partition("]")
        if not closed or (rest and not re.fullmatch(r":[0-9]+", rest)):
            return None
        value = inner
    elif value.count(":") == 1:  # name:port or v4:port
        value, _, port = value.partition(":")
        if not port.isdigit():
            return None
    if ":" in value:
        try:
            return str(ipaddress.IPv6Address(value))
        except ValueError:
            return None
    value = value.rstrip(".")
    return value if _HOST_NAME.fullmatch(value) else None


def is_protected(path: str) -> bool:
    """Routes that need the token when one is set: all but the open ones, so a new route is protected."""
    return path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)


class AccessGuard:
    """The three checks of this module, in that order. `api_key` None: no token needed; `allowed_hosts`
    (already normalised by `ServeSettings`) adds to the loopback names, `*` accepts any Host."""

    def __init__(self, app: Any, *, api_key: str | None, allowed_hosts: tuple[str, ...]) -> None:
        self.app = app
        self.key = None if api_key is None else api_key.encode("ascii")
        self.any_host = ANY_HOST in allowed_hosts
        self.hosts = frozenset((*LOOPBACK_HOSTS, *allowed_hosts))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        refusal = (self._wrong_host(scope, headers) or self._cross_site(scope, headers)
                   or self._unauthorised(scope, headers))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail, extra = refusal
        response = JSONResponse({"detail": detail}, status_code=status,
                                headers={"Connection": "close", "X-Content-Type-Options": "nosniff", **extra})
        await response(scope, receive, send)

    def _wrong_host(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> tuple[int, str, dict] | None:
        if self.any_host:
            return None
        raw = headers.get(b"host", b"").decode("latin-1")
        name = host_name(raw)
        server = scope.get("server")
        arrived_at = host_name(str(server[0])) if server else None  # the bound address this connection reached
        if name is not None and (name in self.hosts or name == arrived_at):
            return None
        shown = raw[:100] or "(none)"
        return (400, f"Host header {shown!r} is not a name of this server; an operator who serves it under that "
                     f"name adds it to DVDM_SERVE_ALLOWED_HOSTS", {})

    def _cross_site(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> tuple[int, str, dict] | None:
        if scope["method"] in SAFE_METHODS:
            return None
        site = headers.get(b"sec-fetch-site")
        if site is not None:
            if site.lower() in BROWSER_SAME_ORIGIN:
                return None
            why = f"Sec-Fetch-Site: {site.decode('latin-1')[:40]}"
        else:
            origin = headers.get(b"origin")
            if origin is None:  # not sent by a browser
                return None
            if urlsplit(origin.decode("latin-1")).netloc.lower() == headers.get(b"host", b"").decode("latin-1").lower():
                return None
            why = f"Origin {origin.decode('latin-1')[:100]}"
        return (403, f"cross-origin {scope['method']} refused ({why}): use the page this server serves, or a "
                     f"client that is not a browser", {})

    def _unauthorised(self, scope: dict[str, Any], headers: dict[bytes, bytes]) -> tuple[int, str, dict] | None:
        if self.key is None or not is_protected(scope["path"]):
            return None
        scheme, _, token = headers.get(b"authorization", b"").strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return (401, "this service needs an access token: send the header Authorization: Bearer <token>",
                    {"WWW-Authenticate": REALM})
        if not hmac.compare_digest(token.strip(), self.key):
            return (401, "the access token is not valid", {"WWW-Authenticate": REALM + ', error="invalid_token"'})
        return None


def document_bearer_auth(app: FastAPI) -> None:
    """The OpenAPI schema says which operations need the token, so /docs offers an Authorize button."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()  # FastAPI keeps this dict as app.openapi_schema: completed in place, once
            schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                "type": "http", "scheme": "bearer", "description": "the service's API key (DVDM_SERVE_API_KEY)"}
            for path, operations in schema["paths"].items():
                if is_protected(path):
                    for operation in operations.values():
                        operation["security"] = [{"bearer": []}]
                        operation.setdefault("responses", {})["401"] = {
                            "description": "access token missing or not valid",
                            "content": {"application/json": {"example": {"detail": "the access token is not valid"}}}}
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
