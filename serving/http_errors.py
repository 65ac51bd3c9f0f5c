"""How the service reports a client error: JSON `{"detail": "<what is wrong>"}` with the status code, the
same shape for FastAPI's own validation errors, and the error responses the OpenAPI docs list."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"example": {"detail": text}}}}
    for code, text in ((400, "malformed request body"), (411, "Content-Length required"),
                       (413, "upload too large"), (415, "not multipart/form-data, or not a supported image"),
                       (422, "a field is missing or out of range"), (429, "too many requests in flight"),
                       (503, "no model loaded yet"))}


def http_error(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """A missing or mistyped form field: 422 with one readable `detail` line plus the structured errors."""
    errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
              for e in exc.errors()]
    detail = "; ".join(f"{'.'.join(e['loc'][1:] or e['loc'])}: {e['msg']}" for e in errors)
    return JSONResponse({"detail": detail or "invalid request", "errors": errors}, status_code=422)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
