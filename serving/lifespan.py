"""The app's lifetime: load the model in the background when it starts (so /healthz answers at once),
follow a registry alias while it runs, and delete what was downloaded when it stops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anyio

from serving.model import ModelManager
from serving.settings import ServeSettings

FIRST_LOAD_RETRY = 5.0  # seconds between retries of a failed first load (at most)


async def follow(manager: ModelManager, settings: ServeSettings) -> None:
    """Load the model, then (alias refs) poll the registry; retry a failed first load."""
    while True:
        await anyio.to_thread.run_sync(manager.refresh)
        if manager.current is not None and not manager.polls:
            return
        if manager.current is None:
            interval = min(settings.poll_interval, FIRST_LOAD_RETRY) if settings.poll_interval > 0 \
                else FIRST_LOAD_RETRY
        else:
            interval = settings.poll_interval
        await asyncio.sleep(interval)


def model_lifespan(manager: ModelManager,
                   settings: ServeSettings) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A FastAPI `lifespan` that runs `follow` while the app serves and closes `manager` afterwards."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        task = asyncio.create_task(follow(manager, settings), name="dvdm-model-follower")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            manager.close()

    return lifespan
