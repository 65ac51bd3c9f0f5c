"""POST /v1/generate: multipart image + prompt + sampling fields -> the video.

Checks run cheapest first: the form fields, then that a model is loaded, then the steps against that
model, then the image part's declared type and size, then admission (429 when full), and only then the
(costly) image decode and the generation, both in worker threads. A client that disconnects gives its
queue place or slot back at once: the generation stops between two denoising steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Annotated, Literal

import anyio
import numpy as np
from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from pydantic import BeforeValidator

from dvdm.runtime.errors import GenerationCancelled
from serving.admission import Busy, while_connected
from serving.encode import MEDIA_TYPES, encode_video
from serving.errors import InvalidRequest
from serving.http_errors import ERROR_RESPONSES, http_error
from serving.model import LoadedModel
from serving.model_routes import ready_model, step_limit
from serving.settings import ServeSettings
from serving.upload import BadUpload, decode_image

log = logging.getLogger("serving.app")

GENERATE_PATH = "/v1/generate"
MAX_SEED = 2 ** 63
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client hung up; only the log sees it


def null_means_default(value: object) -> object:
    """The schema declares steps and guidance nullable (null: the model's default); a multipart field can
    only say so as text, so an empty field or `null` means null, as leaving the field out does."""
    return None if isinstance(value, str) and value.strip().lower() in ("", "null") else value


NullMeansDefault = BeforeValidator(null_means_default)

router = APIRouter()


def check_fields(settings: ServeSettings, prompt: str, guidance: float | None, seed: int) -> None:
    """422 for a field out of range, before anything costly (the model is not needed for these)."""
    if len(prompt) > settings.max_prompt_chars:
        raise http_error(422, f"prompt is {len(prompt)} characters, the limit is {settings.max_prompt_chars}")
    if guidance is not None and not (math.isfinite(guidance)
                                     and settings.min_guidance <= guidance <= settings.max_guidance):
        raise http_error(422, f"guidance must be in [{settings.min_guidance}, {settings.max_guidance}], got {guidance}")
    if not 0 <= seed < MAX_SEED:
        raise http_error(422, f"seed must be in [0, 2**63), got {seed}")


def check_steps(steps: int | None, max_steps: int) -> None:
    if steps is not None and not 1 <= steps <= max_steps:
        raise http_error(422, f"steps must be in 1..{max_steps} for this model, got {steps}")


async def read_image_part(image: UploadFile, settings: ServeSettings) -> bytes:
    """The image part's bytes: 415 when it is declared as something other than an image, 413 over the limit
    (at most one byte past the limit is read)."""
    declared = (image.content_type or "").split(";")[0].strip().lower()
    if declared and not (declared.startswith("image/") or declared == "application/octet-stream"):
        raise http_error(415, f"the image part is declared as {declared[:100]}; send an image (PNG, JPEG, WebP, "
                              f"GIF or BMP)")
    data = await image.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise http_error(413, f"the image file exceeds the limit of {settings.max_upload_bytes} bytes")
    return data


def video_headers(model: LoadedModel, fmt: str, seed: int, steps: int, guidance: float, frames: int,
                  seconds: float) -> dict[str, str]:
    """What made the video (model version, seed, steps, guidance) and how long it took."""
    return {**model.headers(), "X-Seed": str(seed), "X-Steps": str(steps), "X-Guidance": repr(float(guidance)),
            "X-Frames": str(frames), "X-Generation-Seconds": f"{seconds:.3f}", "Cache-Control": "no-store",
            "Content-Disposition": f'inline; filename="dvdm-{model.label}-seed{seed}.{fmt}"'}


@router.post(GENERATE_PATH, summary="Generate a video from an image and a prompt",
             response_class=Response,
             responses={200: {"content": {"video/mp4": {}, "image/gif": {}},
                              "description": "the video; X-Model-Version names the model version that made it"},
                        **{k: v for k, v in ERROR_RESPONSES.items() if k != 503}, 503: ERROR_RESPONSES[503]})
async def generate(
    request: Request,
    image: Annotated[UploadFile, File(description="the first frame (PNG, JPEG, WebP, GIF or BMP)")],
    prompt: Annotated[str, Form(description="what should move and how; empty: unconditioned (ignored by "
                                             "models without text)")] = "",
    steps: Annotated[int | None, Form(description="DDIM steps (null, empty or left out: the model's default)"),
                     NullMeansDefault] = None,
    guidance: Annotated[float | None, Form(description="classifier-free guidance scale (null, empty or left out: "
                                                        "the model's default)"), NullMeansDefault] = None,
    seed: Annotated[int, Form(description="noise seed; the same seed gives the same video")] = 0,
    format: Annotated[Literal["mp4", "gif"], Form(description="mp4 (H.264) or gif")] = "mp4",
) -> Response:
    settings: ServeSettings = request.app.state.settings
    check_fields(settings, prompt, guidance, seed)
    model = ready_model(request)  # captured once: a swap during this request does not affect it
    pipe = model.pipeline
    check_steps(steps, step_limit(settings, pipe))
    data = await read_image_part(image, settings)

    def work(frame: np.ndarray, should_stop: Callable[[], bool]) -> tuple[bytes, int]:
        video = pipe.generate(frame, prompt, steps=steps, guidance=guidance, seed=seed, should_stop=should_stop)
        if should_stop():  # no one is left to send it to
            raise GenerationCancelled("generation cancelled before encoding")
        return encode_video(video, format, settings.fps), int(video.shape[0])

    admission = request.app.state.admission
    try:
        async with admission.enter():
            try:
                frame = await anyio.to_thread.run_sync(decode_image, data, settings.max_pixels,
                                                       settings.max_aspect_ratio)
            except BadUpload as exc:
                raise http_error(exc.status, str(exc)) from None
            del data
            async with while_connected(request.is_disconnected, settings.disconnect_poll) as gone:
                async with admission.slot():
                    started = time.perf_counter()
                    try:
                        body, frames = await anyio.to_thread.run_sync(work, frame, gone.is_set)
                    except InvalidRequest as exc:
                        raise http_error(422, str(exc)) from None
                    seconds = time.perf_counter() - started
    except Busy as exc:
        raise http_error(429, str(exc), headers={"Retry-After": str(settings.retry_after)}) from None
    except GenerationCancelled as exc:
        log.info("serving: %s (%s, seed %d, model %s); its slot is free", exc, format, seed, model.label)
        raise http_error(CLIENT_CLOSED_REQUEST, f"{exc}") from None
    used_steps = steps if steps is not None else int(pipe.defaults["steps"])
    used_guidance = guidance if guidance is not None else float(pipe.defaults["guidance"])
    log.info("serving: generated %d frames (%s, %d steps, seed %d) with model %s in %.2fs", frames, format,
             used_steps, seed, model.label, seconds)
    return Response(body, media_type=MEDIA_TYPES[format],
                    headers=video_headers(model, format, seed, used_steps, used_guidance, frames, seconds))
