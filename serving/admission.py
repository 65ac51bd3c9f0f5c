"""Admission control for generations: a bounded number run, a bounded number wait, the rest is turned
away at once (429) instead of queueing without limit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


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
