"""`ThreadGovernor`: torch's CPU thread count chosen by measured step time, re-checked as the machine changes.

On a quiet machine every core helps; beside another busy process, an OpenMP pool of N threads on N cores
waits at every parallel region for the thread that lost its core, and a small model trains faster on one
thread (benchmarks/busy_machine.py: the tiny train-ae stage took 28.8 s on 2 threads beside a busy core and
16.9 s on 1, against 11.2 s / 15.6 s alone). No fixed count is right for both, and the load changes during a
run, so the governor measures: every `period` steps it times `probe` steps at each candidate count (all
available threads, and one), after one untimed step to let the pool settle, and trains at the faster until the
next probe. Probing costs at most 2 * (probe + 1) of `period` steps at the slower count.

Thread counts change floating-point reduction order, so a governed run is not bit-for-bit repeatable;
`TrainConfig.adaptive_threads = False` (or a user's own OMP_NUM_THREADS) keeps the count fixed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


class ThreadGovernor:
    def __init__(self, max_threads: int, *, period: int = 200, probe: int = 4, first_probe: int = 10,
                 set_threads: Callable[[int], None] | None = None) -> None:
        import torch

        self.candidates = (max_threads, 1) if max_threads > 1 else (max_threads,)
        self.period, self.probe, self.first_probe = period, probe, first_probe
        self._set = set_threads or torch.set_num_threads
        self.threads = max_threads
        self.choices: list[tuple[int, int, dict[int, float]]] = []  # (step, chosen, median s/step per count)
        self._plan: list[int] = []      # the counts of the probe in progress, one entry per step
        self._times: dict[int, list[float]] = {}
        self._seen: dict[int, int] = {}
        self._next_probe = first_probe
        self._started: float | None = None

    @property
    def active(self) -> bool:
        return len(self.candidates) > 1

    def before_step(self, step: int) -> None:
        if not self.active:
            return
        if not self._plan and step >= self._next_probe:
            self._plan = [n for n in self.candidates for _ in range(self.probe + 1)]
            self._times = {n: [] for n in self.candidates}
            self._seen: dict[int, int] = {}
        if self._plan:
            self._use(self._plan[0])
        self._started = time.perf_counter()

    def after_step(self, step: int) -> None:
        if not self._plan or self._started is None:
            return
        elapsed = time.perf_counter() - self._started
        n = self._plan.pop(0)
        self._seen[n] = self._seen.get(n, 0) + 1
        if self._seen[n] > 1:  # the first step at a count only lets the pool settle
            self._times[n].append(elapsed)
        if not self._plan:
            medians = {k: statistics.median(v) for k, v in self._times.items() if v}
            best = min(medians, key=medians.get)
            self.choices.append((step, best, medians))
            self._use(best)
            self._next_probe = step + self.period

    def _use(self, n: int) -> None:
        if n != self.threads:
            self._set(n)
            self.threads = n
