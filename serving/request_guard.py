"""ASGI middleware in front of the upload route: the request is refused before its body is read when it
is not multipart or declares too large a body, and while it streams in once it grows past the limit."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from serving.http_errors import http_error


class RequestGuard:
    """`X-Content-Type-Options: nosniff` on every response, and for POST `guarded_path` a multipart content
    type and a body no larger than `max_body` (checked on Content-Length before anything is read, and again
    while the body streams in, so a chunked or lying request cannot get past it)."""

    def __init__(self, app: Any, max_body: int, guarded_path: str) -> None:
        self.app = app
        self.max_body = max_body
        self.guarded_path = guarded_path

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        if scope["path"] == self.guarded_path and scope["method"] == "POST":
            problem = self._refusal({k.lower(): v for k, v in scope.get("headers", [])})
            if problem is not None:
                response = JSONResponse({"detail": problem[1]}, status_code=problem[0],
                                        headers={"Connection": "close"})
                await response(scope, receive, send_nosniff)
                return
            receive = self._limited(receive)
        await self.app(scope, receive, send_nosniff)

    def _refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        """(status, detail) when the headers alone rule the request out, else None."""
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"multipart/form-data":
            return (415, f"send the request as multipart/form-data (an image file and form fields), not "
                         f"{ctype.decode('latin-1')[:100] or 'a body without content type'}")
        length = headers.get(b"content-length")
        if length is None:
            return None
        try:
            size = int(length)
        except ValueError:
            size = -1
        if size < 0:
            return (400, "malformed Content-Length header")
        if size > self.max_body:
            return (413, f"request body of {size} bytes exceeds the limit of {self.max_body} bytes")
        return None

    def _limited(self, receive: Any) -> Any:
        seen = 0

        async def wrapped() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # FastAPI re-raises an HTTPException from form parsing as is
                    raise http_error(413, f"request body exceeds the limit of {self.max_body} bytes")
            return message

        return wrapped
