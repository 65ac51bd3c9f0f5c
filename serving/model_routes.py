"""The routes about the service and its model: /healthz (alive), /readyz (a model is loaded) and
/v1/model (which version serves, its metrics, defaults and limits). Handlers read the `ModelManager` and
`ServeSettings` that `create_app` puts on `app.state`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from serving.http_errors import ERROR_RESPONSES, http_error
from serving.model import LoadedModel
from serving.settings import ServeSettings

if TYPE_CHECKING:
    from dvdm.runtime.pipeline import OrtVideoPipeline

router = APIRouter()


def ready_model(request: Request) -> LoadedModel:
    """The model serving now; 503 + Retry-After (and the load error, if any) while none is loaded."""
    manager, settings = request.app.state.manager, request.app.state.settings
    model = manager.current
    if model is None:
        why = f": {manager.last_error}" if manager.last_error else ""
        raise http_error(503, f"no model loaded yet ({manager.ref.raw}){why}",
                         headers={"Retry-After": str(settings.retry_after)})
    return model


def step_limit(settings: ServeSettings, pipe: OrtVideoPipeline) -> int:
    """The most DDIM steps a request may ask of this model: the setting, capped by the model's timesteps."""
    return min(settings.max_steps, pipe.num_timesteps)


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="A model is loaded and serving", responses={503: ERROR_RESPONSES[503]})
async def readyz(request: Request) -> dict[str, Any]:
    model = ready_model(request)
    return {"status": "ready", "version": model.version, "label": model.label}


@router.get("/v1/model", summary="The model serving now: version, alias, metrics, provider, manifest, limits",
            responses={503: ERROR_RESPONSES[503]})
async def model_info(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    model = ready_model(request)
    pipe = model.pipeline
    max_steps = step_limit(settings, pipe)
    defaults = {"steps": min(int(pipe.defaults["steps"]), max_steps), "guidance": float(pipe.defaults["guidance"]),
                "seed": 0, "format": "mp4"}
    return {**model.describe(), "defaults": defaults,
            "limits": {**settings.limits(), "max_steps": max_steps}, "follow": request.app.state.manager.status()}
