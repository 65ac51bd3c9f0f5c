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

Every client error is a 4xx with JSON `{"detail": "<what is wrong>"}`. The upload is checked by size (the
request body is refused beyond the limit before it is read), decoded by Pillow from memory (the filename and
declared content type are never trusted, and nothing of the request becomes a path or a shell argument),
its pixel count checked from the header before the pixels are decoded. Generations run in worker threads,
at most `max_concurrency` at once with `max_queue` waiting; beyond that 429 + Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import math
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from serving.errors import InvalidRequest
from serving.model import LoadedModel, ModelManager, parse_model_ref
from serving.settings import ServeSettings

log = logging.getLogger("serving.app")

STATIC = Path(__file__).resolve().parent / "static"
GENERATE_PATH = "/v1/generate"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # the only decoders Pillow may use on an upload
MEDIA_TYPES = {"mp4": "video/mp4", "gif": "image/gif"}
MAX_SEED = 2 ** 63
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; style-src 'self'; "
            "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"example": {"detail": text}}}}
    for code, text in ((400, "malformed request body"), (411, "Content-Length required"),
                       (413, "upload too large"), (415, "not multipart/form-data, or not a supported image"),
                       (422, "a field is missing or out of range"), (429, "too many requests in flight"),
                       (503, "no model loaded yet"))}


class Busy(Exception):
    """Every generation slot and queue place is taken."""


class BadUpload(InvalidRequest):
    """An upload that is not a usable image; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


class RequestGuard:
    """ASGI middleware: `X-Content-Type-Options: nosniff` on every response, and for POST /v1/generate a
    multipart content type and a body no larger than the limit (checked on Content-Length before anything
    is read, and again while the body streams in, so a chunked or lying request cannot get past it)."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-content-type-options", b"nosniff")]
            await send(message)

        if scope["path"] == GENERATE_PATH and scope["method"] == "POST":
            headers = {k.lower(): v for k, v in scope.get("headers", [])}
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            problem: tuple[int, str] | None = None
            if ctype != b"multipart/form-data":
                problem = (415, f"send the request as multipart/form-data (an image file and form fields), not "
                                f"{ctype.decode('latin-1')[:100] or 'a body without content type'}")
            else:
                length = headers.get(b"content-length")
                if length is not None:
                    try:
                        size = int(length)
                    except ValueError:
                        size = -1
                    if size < 0:
                        problem = (400, "malformed Content-Length header")
                    elif size > self.max_body:
                        problem = (413, f"request body of {size} bytes exceeds the limit of {self.max_body} bytes")
            if problem is not None:
                response = JSONResponse({"detail": problem[1]}, status_code=problem[0],
                                        headers={"Connection": "close"})
                await response(scope, receive, send_nosniff)
                return
            receive = self._limited(receive)
        await self.app(scope, receive, send_nosniff)

    def _limited(self, receive: Any) -> Any:
        seen = 0

        async def wrapped() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # FastAPI re-raises an HTTPException from form parsing as is
                    raise _error(413, f"request body exceeds the limit of {self.max_body} bytes")
            return message

        return wrapped


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Upload bytes -> uint8 RGB (H, W, 3). BadUpload (-> 4xx) for anything that is not a supported
    image, or one with more than `max_pixels` pixels (checked from the header, before decoding)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadUpload("the image file is empty")
    try:
        # Image.open reads the header only; the pixel count is checked before any pixel is decoded
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
            width, height = im.size
            if width < 1 or height < 1:
                raise BadUpload(f"the image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise BadUpload(f"the image is {width}x{height} = {width * height} pixels, more than the "
                                f"limit of {max_pixels} pixels; scale it down", 413)
            im.seek(0)  # animated GIF/WebP: the first frame
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except BadUpload:
        raise
    except UnidentifiedImageError:
        raise BadUpload(f"the upload is not a supported image (send {', '.join(IMAGE_FORMATS)})", 415) from None
    except Image.DecompressionBombError as exc:
        raise BadUpload(f"the image is too large to decode safely ({exc})", 413) from None
    except Exception as exc:  # truncated or corrupt files raise OSError, SyntaxError, ValueError, ...
        raise BadUpload(f"the image could not be decoded ({type(exc).__name__}: {exc})"[:300]) from None
    return np.asarray(rgb, dtype=np.uint8)


def encode_video(video: np.ndarray, fmt: str, fps: float) -> bytes:
    """uint8 (T, H, W, 3) -> MP4 (H.264) or GIF bytes, through a private temp folder (dvdm.video.writer)."""
    from dvdm.video.writer import write_gif, write_mp4

    with tempfile.TemporaryDirectory(prefix="dvdm-serve-") as tmp:
        path = Path(tmp) / f"video.{fmt}"  # a fixed name: nothing from the request
        if fmt == "mp4":
            write_mp4(path, video, fps=fps)
        else:
            write_gif(path, video, fps=fps)
        return path.read_bytes()


class Admission:
    """At most `slots` generations at once and `queue` waiting; the rest is turned away (Busy)."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots, self.queue = slots, queue
        self.admitted = 0  # running + waiting; touched only on the event loop thread
        self.running = 0
        self._sem: asyncio.Semaphore | None = None

    @contextlib.asynccontextmanager
    async def enter(self) -> AsyncIterator[None]:
        if self.admitted >= self.slots + self.queue:
            raise Busy(f"server busy: {self.running} generation(s) running and {self.admitted - self.running} "
                       f"waiting (limits: {self.slots} running, {self.queue} waiting); retry later")
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.slots)
        async with self._sem:
            self.running += 1
            try:
                yield
            finally:
                self.running -= 1


def create_app(model_ref: str | Path, *, settings: ServeSettings | None = None) -> FastAPI:
    """The service for `model_ref` (`models:/dvdm@champion`, `models:/dvdm/3` or an export folder).

    Loading starts in the background when the app starts (lifespan): /healthz answers at once, /readyz
    once the model is loaded. An alias reference is polled every `settings.poll_interval` seconds.
    """
    settings = settings or ServeSettings.from_env()
    ref = parse_model_ref(model_ref)
    manager = ModelManager(ref, settings)
    admission = Admission(settings.max_concurrency, settings.max_queue)

    async def follow() -> None:
        """Load the model, then (alias refs) poll the registry; retry a failed first load."""
        while True:
            await anyio.to_thread.run_sync(manager.refresh)
            if manager.current is not None and not manager.polls:
                return
            if manager.current is None:
                interval = min(settings.poll_interval, 5.0) if settings.poll_interval > 0 else 5.0
            else:
                interval = settings.poll_interval
            await asyncio.sleep(interval)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(follow(), name="dvdm-model-follower")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            manager.close()

    # FastAPIOffline: /docs (Swagger UI) and /redoc load their scripts from this server, not a CDN, so the
    # API docs work on machines without internet like the page does
    app = FastAPIOffline(title="dvdm", version=_dvdm_version(), lifespan=lifespan, static_url="/docs-assets",
                  summary="Image + prompt -> short video (D-VDM), served with ONNX Runtime.",
                  description="Upload a first frame and a prompt, get a video back. `GET /v1/model` says which "
                              "registered model version is serving; a newly promoted version is swapped in "
                              "without dropping requests.")
    app.state.settings = settings
    app.state.manager = manager
    app.state.admission = admission
    app.add_middleware(RequestGuard, max_body=settings.max_request_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")}
                  for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(e['loc'][1:] or e['loc'])}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": detail or "invalid request", "errors": errors}, status_code=422)

    def ready_model() -> LoadedModel:
        model = manager.current
        if model is None:
            why = f": {manager.last_error}" if manager.last_error else ""
            raise _error(503, f"no model loaded yet ({manager.ref.raw}){why}",
                         headers={"Retry-After": str(settings.retry_after)})
        return model

    @app.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="A model is loaded and serving", responses={503: ERROR_RESPONSES[503]})
    async def readyz() -> dict[str, Any]:
        model = ready_model()
        return {"status": "ready", "version": model.version, "label": model.label}

    @app.get("/v1/model", summary="The model serving now: version, alias, metrics, provider, manifest, limits",
             responses={503: ERROR_RESPONSES[503]})
    async def model_info() -> dict[str, Any]:
        model = ready_model()
        pipe = model.pipeline
        max_steps = min(settings.max_steps, pipe.num_timesteps)
        defaults = {"steps": min(int(pipe.defaults["steps"]), max_steps), "guidance": float(pipe.defaults["guidance"]),
                    "seed": 0, "format": "mp4"}
        return {**model.describe(), "defaults": defaults,
                "limits": {**settings.limits(), "max_steps": max_steps}, "follow": manager.status()}

    @app.post(GENERATE_PATH, summary="Generate a video from an image and a prompt",
              response_class=Response,
              responses={200: {"content": {"video/mp4": {}, "image/gif": {}},
                               "description": "the video; X-Model-Version names the model version that made it"},
                         **{k: v for k, v in ERROR_RESPONSES.items() if k != 503}, 503: ERROR_RESPONSES[503]})
    async def generate(
        image: Annotated[UploadFile, File(description="the first frame (PNG, JPEG, WebP, GIF or BMP)")],
        prompt: Annotated[str, Form(description="what should move and how; empty: unconditioned (ignored by "
                                                 "models without text)")] = "",
        steps: Annotated[int | None, Form(description="DDIM steps (default: the model's)")] = None,
        guidance: Annotated[float | None, Form(description="classifier-free guidance scale (default: the "
                                                            "model's)")] = None,
        seed: Annotated[int, Form(description="noise seed; the same seed gives the same video")] = 0,
        format: Annotated[Literal["mp4", "gif"], Form(description="mp4 (H.264) or gif")] = "mp4",
    ) -> Response:
        # cheap field checks first, then the model, then the queue, then the (costly) image decode
        if len(prompt) > settings.max_prompt_chars:
            raise _error(422, f"prompt is {len(prompt)} characters, the limit is {settings.max_prompt_chars}")
        if guidance is not None and not (math.isfinite(guidance)
                                         and settings.min_guidance <= guidance <= settings.max_guidance):
            raise _error(422, f"guidance must be in [{settings.min_guidance}, {settings.max_guidance}], got {guidance}")
        if not 0 <= seed < MAX_SEED:
            raise _error(422, f"seed must be in [0, 2**63), got {seed}")
        model = ready_model()  # captured once: a swap during this request does not affect it
        pipe = model.pipeline
        max_steps = min(settings.max_steps, pipe.num_timesteps)
        if steps is not None and not 1 <= steps <= max_steps:
            raise _error(422, f"steps must be in 1..{max_steps} for this model, got {steps}")
        declared = (image.content_type or "").split(";")[0].strip().lower()
        if declared and not (declared.startswith("image/") or declared == "application/octet-stream"):
            raise _error(415, f"the image part is declared as {declared[:100]}; send an image (PNG, JPEG, WebP, "
                              f"GIF or BMP)")
        data = await image.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise _error(413, f"the image file exceeds the limit of {settings.max_upload_bytes} bytes")
        try:
            async with admission.enter():
                try:
                    frame = await anyio.to_thread.run_sync(decode_image, data, settings.max_pixels)
                except BadUpload as exc:
                    raise _error(exc.status, str(exc)) from None
                del data
                async with admission.slot():
                    started = time.perf_counter()

                    def work() -> tuple[bytes, int]:
                        video = pipe.generate(frame, prompt, steps=steps, guidance=guidance, seed=seed)
                        return encode_video(video, format, settings.fps), int(video.shape[0])

                    try:
                        body, frames = await anyio.to_thread.run_sync(work)
                    except InvalidRequest as exc:
                        raise _error(422, str(exc)) from None
                    seconds = time.perf_counter() - started
        except Busy as exc:
            raise _error(429, str(exc), headers={"Retry-After": str(settings.retry_after)}) from None
        used_steps = steps if steps is not None else int(pipe.defaults["steps"])
        used_guidance = guidance if guidance is not None else float(pipe.defaults["guidance"])
        log.info("serving: generated %d frames (%s, %d steps, seed %d) with model %s in %.2fs", frames, format,
                 used_steps, seed, model.label, seconds)
        headers = {**model.headers(), "X-Seed": str(seed), "X-Steps": str(used_steps),
                   "X-Guidance": repr(float(used_guidance)), "X-Frames": str(frames),
                   "X-Generation-Seconds": f"{seconds:.3f}", "Cache-Control": "no-store",
                   "Content-Disposition": f'inline; filename="dvdm-{model.label}-seed{seed}.{format}"'}
        return Response(body, media_type=MEDIA_TYPES[format], headers=headers)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _dvdm_version() -> str:
    try:
        from importlib.metadata import version

        return version("dvdm")
    except Exception:  # not installed (running from a source tree)
        return "0"
