"""Admission control for generations: a bounded number run, a bounded number wait, the rest is turned
away at once (429) instead of queueing without limit; a request whose client has gone gives its place
back at once (`while_connected`) instead of holding it to the end."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from dvdm.runtime.errors import GenerationCancelled


class Busy(Exception):
    """Every generation slot and queue place is taken."""


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
        if self._sem is None:  # created on first use, inside the running event loop
            self._sem = asyncio.Semaphore(self.slots)
        async with self._sem:
            self.running += 1
            try:
                yield
            finally:
                self.running -= 1


@contextlib.asynccontextmanager
async def while_connected(is_disconnected: Callable[[], Awaitable[bool]], poll: float) -> AsyncIterator[threading.Event]:
    """Run the body only while the client is connected.

    `is_disconnected` (Starlette's `request.is_disconnected`) is polled every `poll` s. Once the client is
    gone, the yielded Event is set, for a worker thread to check between denoising steps (a thread cannot
    be interrupted from outside), and the body's awaits are cancelled, so a wait for a slot ends at once;
    a worker thread is still awaited, and stops at its next check. The body then ends with
    GenerationCancelled, whichever of the two noticed first.
    """
    gone = threading.Event()
    body_running = True
    with anyio.CancelScope() as scope:
        async def watch() -> None:
            while not await is_disconnected():
                await asyncio.sleep(poll)
            if body_running:  # never cancel the request's task once the body is over
                gone.set()
                scope.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            yield gone
        finally:
            body_running = False
            watcher.cancel()
    if scope.cancelled_caught:
        raise GenerationCancelled("the client disconnected before its generation finished")
