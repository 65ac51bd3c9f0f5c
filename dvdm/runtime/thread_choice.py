"""How many intra-op threads a denoiser should run on, chosen by timing it when the model loads.

More threads are not always faster: the default ED-VDM denoiser works on an 8x8 block grid, its ~750 operators
take microseconds each, and without spin-waiting (which dvdm turns off, see `dvdm.runtime.cpus`) waking a
second thread for every operator costs about what it saves (benchmarks/onnx_vs_torch.py times one and two
threads side by side: within noise of each other), while a paper-size 16x128x128 model needs every core.
So `threads="auto"` times a few denoiser calls at the batch the default request runs (guided: 2) with each
candidate count - all the CPUs this process may use, and one - and keeps the faster. On CUDA the count does
not matter and nothing is timed.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from dvdm.runtime import cpus
from dvdm.runtime.batch_sessions import BatchSizedSessions
from dvdm.runtime.sessions import ProviderChoice

log = logging.getLogger("dvdm.runtime.thread_choice")

AUTO = "auto"


def random_feeds(sessions: BatchSizedSessions, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the graph's declared shapes (named axes set to `batch`): floats ~ N(0, 1), integers 0."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in sessions.get_inputs():
        shape = tuple(batch if isinstance(d, str) or d is None else int(d) for d in spec.shape)
        feeds[spec.name] = (np.zeros(shape, np.int64) if "int" in spec.type
                            else rng.standard_normal(shape, dtype=np.float32))
    return feeds


def time_calls(sessions: BatchSizedSessions, feeds: dict[str, np.ndarray], runs: int = 8) -> float:
    """Median seconds of a call at the feeds' batch, after one untimed call (which also builds the session)."""
    session = sessions.for_batch(len(next(iter(feeds.values()))))
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def fastest_denoiser(model: str | os.PathLike[str], choice: ProviderChoice, batch: int,
                     candidates: tuple[int, ...] | None = None,
                     measure: Callable[[BatchSizedSessions, dict[str, np.ndarray]], float] = time_calls,
                     ) -> tuple[int, BatchSizedSessions, dict[int, float]]:
    """(thread count, its sessions, seconds per call of each count) for the denoiser graph at `model`."""
    if candidates is None:
        most = cpus.ort_threads() or cpus.available_cpus()
        candidates = tuple(dict.fromkeys((most, 1)))
    timings: dict[int, float] = {}
    best: tuple[int, Any] | None = None
    for threads in candidates:
        sessions = BatchSizedSessions(model, choice, threads)
        timings[threads] = measure(sessions, random_feeds(sessions, batch))
        if best is None or timings[threads] < timings[best[0]]:
            best = (threads, sessions)
    assert best is not None
    log.info("serving: denoiser on %d intra-op thread(s) (seconds per call at batch %d: %s)", best[0], batch,
             ", ".join(f"{n}: {s:.4f}" for n, s in timings.items()))
    return best[0], best[1], timings
