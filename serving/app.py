"""The HTTP service: FastAPI app around `OrtVideoPipeline` (numpy + onnxruntime; never torch).

    from serving.app import create_app
    from serving.settings import ServeSettings
    app = create_app("models:/dvdm@champion", settings=ServeSettings.from_env())

Routes
    POST /v1/generate   multipart form: image (file), prompt, steps, guidance, seed, format (mp4|gif)
                        -> the video bytes (video/mp4 or image/gif), headers X-Model-Version/-Name/-Alias
    GET  /healthz       the process is alive
    GET  /readyz        a model is loaded (503 + Retry-After until then)
    GET  /v1/model      version, alias, registry metrics, provider, manifest summary, limits
    GET  /              the web page (serving/static), GET /docs, /redoc and /openapi.json: the OpenAPI docs
                        (their assets served from /docs-assets, nothing from a CDN)

Access (`serving.access`, checked first): the Host header must name this server, a browser's POST must come
from this server's own page, and with `settings.api_key` every route but /healthz, /readyz, the page and the
API docs needs `Authorization: Bearer <key>` (400 / 403 / 401 otherwise).

Every client error is a 4xx with JSON `{"detail": "<what is wrong>"}` (`serving.http_errors`). The upload is
checked by size (the request body is refused beyond the limit before it is read: `serving.request_guard`),
decoded by Pillow from memory (`serving.upload`: the filename and declared content type are never trusted,
and nothing of the request becomes a path or a shell argument), its pixel count checked from the header
before the pixels are decoded. Generations run in worker threads, at most `max_concurrency` at once with
`max_queue` waiting; beyond that 429 + Retry-After (`serving.admission`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from serving import generate, model_routes
from serving.access import AccessGuard, document_bearer_auth
from serving.admission import Admission
from serving.http_errors import add_error_handlers
from serving.lifespan import model_lifespan
from dvdm.model_ref import parse_model_ref
from serving.model import LoadedModel, ModelManager
from serving.page import mount_page
from serving.request_guard import RequestGuard
from serving.settings import ServeSettings
from serving.upload import decode_image

__all__ = ["create_app", "decode_image"]  # decode_image: the upload check, importable with the app


def create_app(model_ref: str | Path, *, settings: ServeSettings | None = None) -> FastAPI:
    """The service for `model_ref` (`models:/dvdm@champion`, `models:/dvdm/3` or an export folder).

    Loading starts in the background when the app starts (lifespan): /healthz answers at once, /readyz
    once the model is loaded. An alias reference is polled every `settings.poll_interval` seconds.
    Route handlers find the settings, the model manager and the admission limits on `app.state`.
    """
    settings = settings or ServeSettings.from_env()
    manager = ModelManager(parse_model_ref(model_ref), settings)
    # FastAPIOffline: /docs (Swagger UI) and /redoc load their scripts from this server, not a CDN, so the
    # API docs work on machines without internet like the page does
    app = FastAPIOffline(title="dvdm", version=_dvdm_version(), lifespan=model_lifespan(manager, settings),
                         static_url="/docs-assets",
                         summary="Image + prompt -> short video, served with ONNX Runtime.",
                         description=DOCS_DESCRIPTION)
    document_the_model(app, manager)
    app.state.settings = settings
    app.state.manager = manager
    app.state.admission = Admission(settings.max_concurrency, settings.max_queue)
    app.add_middleware(RequestGuard, max_body=settings.max_request_bytes, guarded_path=generate.GENERATE_PATH)
    # added last = runs first: who may ask is settled before the upload checks look at the request
    app.add_middleware(AccessGuard, api_key=settings.api_key, allowed_hosts=settings.allowed_hosts)
    if settings.api_key is not None:
        document_bearer_auth(app)
    add_error_handlers(app)
    app.include_router(model_routes.router)
    app.include_router(generate.router)
    mount_page(app)
    return app


DOCS_DESCRIPTION = ("Upload a first frame and a prompt, get a video back. `GET /v1/model` says which registered "
                    "model version is serving; a newly promoted version is swapped in without dropping requests.")


def serving_line(model: LoadedModel | None) -> str:
    """What the API docs say about the model serving now: its method (the export manifest's description of
    its target space, e.g. "ED-VDM: ...") or, for an export without one, the space's name."""
    if model is None:
        return "No model is loaded yet."
    space = model.pipeline.manifest["space"]
    what = space.get("description") or "a dvdm model"
    which = f"{model.name} version {model.label}" if model.name else "a local export"
    return f"Serving {which}: {what} (target space `{space['name']}`)."


def document_the_model(app: FastAPI, manager: ModelManager) -> None:
    """/docs, /redoc and /openapi.json name the model serving now; the schema is rebuilt after a swap (the newly
    promoted version may be of another space)."""
    build = app.openapi
    shown: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        model = manager.current
        if shown.get("model", False) is not model:
            shown["model"] = model
            app.description = f"{serving_line(model)}\n\n{DOCS_DESCRIPTION}"
            app.openapi_schema = None
        return build()

    app.openapi = openapi  # type: ignore[method-assign]


def _dvdm_version() -> str:
    try:
        from importlib.metadata import version

        return version("dvdm")
    except Exception:  # not installed (running from a source tree)
        return "0"
