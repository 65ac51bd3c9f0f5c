"""Progress of a long step (training, evaluation, export) where its user looks, with step/total, rate and ETA.

- On a terminal (stderr is a TTY): a tqdm bar, e.g.
  `train diffusion:  29%|###       | 1200/4200 [05:52<14:40, 3.41step/s, loss=0.0412]`.
- Anywhere else (a log file, CI, a worker's output): a line every `DVDM_PROGRESS_SECONDS` (default 30) and a
  last one when the step ends, e.g.
  `train diffusion: step 1200/4200 (29%), loss 0.0412, 3.41 steps/s, elapsed 5m52s, ETA 14m40s`.
- Every line, on a terminal too, is also logged at INFO on the `dvdm.progress` logger, for log collectors: the
  Prefect flows send it to the run's log (the Prefect UI shows it); any program can with `logging`.

Notes (a checkpoint written, samples saved) go above the bar, or as a line, and into the same log. Values
given with an update (a loss) are shown as their mean since the previous line, so a line sums up its window.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import TextIO

from dvdm.errors import ConfigError

LOGGER_NAME = "dvdm.progress"
log = logging.getLogger(LOGGER_NAME)

SECONDS_ENV = "DVDM_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0

# progress bars of libraries dvdm calls, which would print over ours: huggingface_hub's (and transformers',
# which follows it when imported later), MLflow's artifact upload/download bars
THIRD_PARTY_BARS_OFF = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def quiet_third_party_bars() -> None:
    """Turn the other libraries' bars off for this process (a user's own setting wins)."""
    for key, value in THIRD_PARTY_BARS_OFF.items():
        os.environ.setdefault(key, value)


def line_interval() -> float:
    """Seconds between two progress lines: `$DVDM_PROGRESS_SECONDS`, else 30."""
    value = os.environ.get(SECONDS_ENV)
    if value is None:
        return DEFAULT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise ConfigError(f"{SECONDS_ENV}={value!r}: give the seconds between two progress lines, a number > 0")
    return seconds


def format_duration(seconds: float) -> str:
    """0.4s, 42s, 5m52s, 1h02m."""
    if seconds < 9.95:
        return f"{max(0.0, seconds):.1f}s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def announce(text: str, stream: TextIO | None = None) -> None:
    """One line for whoever watches: on the terminal (above any progress bar there) and in the log."""
    stream = stream or sys.stderr
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:  # an install without tqdm (it comes with [train]) has no bars to write above
        stream.write(text + "\n")
    else:
        tqdm.write(text, file=stream)
    stream.flush()
    log.info(text)


class Progress:
    """Progress of one long step: `update(position, loss=...)` as it goes, `close()` (or a `with` block) at the end.

    `total` None: the count is unknown (no percentage or ETA). `start`: where a resumed step starts (rate and
    ETA count only this run's work). `bar`: None decides by whether `stream` (default stderr) is a terminal.
    `interval`: seconds between lines (default `$DVDM_PROGRESS_SECONDS` or 30)."""

    def __init__(self, label: str, total: int | None, unit: str = "step", *, start: int = 0,
                 stream: TextIO | None = None, bar: bool | None = None, interval: float | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.interval = line_interval() if interval is None else interval
        self.start = self.position = start
        self.current: str | None = None
        self.started = self.last_line = time.perf_counter()
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._shown: dict[str, float] = {}
        self.closed = False
        terminal = getattr(self.stream, "isatty", lambda: False)()
        self._bar = self._open_bar() if (terminal if bar is None else bar) else None

    def _open_bar(self):
        try:
            from tqdm import tqdm
        except ModuleNotFoundError:  # an install without tqdm (it comes with [train]) gets the lines
            return None
        return tqdm(total=self.total, initial=self.start, desc=self.label, unit=self.unit, file=self.stream,
                    dynamic_ncols=True, mininterval=0.5, leave=None)  # None: a nested bar goes when done

    # ------------------------------------------------------------------------------------------- updates
    def update(self, position: int, current: str | None = None, **values: float) -> None:
        """Now at `position` (of `total`); `current`: a word on where it is, e.g. the part just finished (shown
        after the numbers); `values` (e.g. loss): averaged until the next line."""
        for key, value in values.items():
            if value is not None and math.isfinite(value):
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
                self._counts[key] = self._counts.get(key, 0) + 1
        if current is not None:
            self.current = current
        moved, self.position = position - self.position, position
        if self._bar is not None:
            means = self._means()
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()}, refresh=False)
            if current is not None:
                self._bar.set_description(f"{self.label} ({current})", refresh=False)
            self._bar.update(moved)
        if time.perf_counter() - self.last_line >= self.interval:
            self._line(self.describe())

    def advance(self, n: int = 1, current: str | None = None, **values: float) -> None:
        """`n` more done (see `update`)."""
        self.update(self.position + n, current, **values)

    def note(self, text: str) -> None:
        """A message about the step (above the bar on a terminal) that goes into the log too."""
        announce(f"{self.label}: {text}", self.stream)

    def close(self, stopped: bool = False) -> None:
        """The last line: how far it got, in how long (`stopped`: it ended early, by an error)."""
        if self.closed:
            return
        self.closed = True
        if self._bar is not None:
            self._bar.close()
        self._line(self.describe(end="stopped" if stopped else "done"))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(stopped=exc_type is not None)

    # ------------------------------------------------------------------------------------------- lines
    def _means(self) -> dict[str, float]:
        if self._counts:
            self._shown = {k: self._sums[k] / self._counts[k] for k in self._counts}
        return self._shown

    def rate(self) -> float | None:
        """Units per second in this run (None before the first)."""
        done, elapsed = self.position - self.start, time.perf_counter() - self.started
        return done / elapsed if done > 0 and elapsed > 0 else None

    def describe(self, end: str | None = None) -> str:
        """The progress line: position/total, percentage, averaged values, rate, elapsed and ETA; `end` ("done",
        "stopped") makes it the last line."""
        plural, final = f"{self.unit}s", end is not None
        rate, elapsed = self.rate(), time.perf_counter() - self.started
        where = f"{self.position}/{self.total}" if self.total else f"{self.position}"
        parts = [f"{self.label}: {end + ', ' if final else ''}{self.unit} {where}"
                 + (f" ({100 * self.position / self.total:.0f}%)" if self.total else "")]
        parts += [f"{k} {v:.4g}" for k, v in self._means().items()]
        if rate is not None:
            parts.append(f"{rate:.3g} {plural}/s")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if not final and self.total and rate:
            parts.append(f"ETA {format_duration((self.total - self.position) / rate)}")
        if self.current and not final:
            parts.append(self.current)
        return ", ".join(parts)

    def _line(self, text: str) -> None:
        """A line: written on the stream when no bar shows the progress there; logged always."""
        if self._bar is None:
            self.stream.write(text + "\n")
            self.stream.flush()
        log.info(text)
        self.last_line = time.perf_counter()
        self._sums.clear()
        self._counts.clear()
