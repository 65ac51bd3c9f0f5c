"""The trainer callback that streams a training run to MLflow: metrics, sample videos, checkpoint paths.

Metrics are buffered and sent with one `log_batch` call every `flush_every` points or `flush_seconds`
(and at every sample and checkpoint), so a step costs a list append, not a database write. A tracking
failure (database locked, server down) is logged as a warning and retried at the next flush: losing a
chart must never kill hours of training.

After a resume from a checkpoint the trainer reports again the steps between that checkpoint and the
crash; those steps are already in the run, so steps up to the last one logged are skipped (resume is
bit-identical on CPU, so the values would be the same).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dvdm.tracking.runs import clean_key, log_metric_batch, numeric_metrics, set_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHECKPOINT_TAG = "dvdm.checkpoint"
CHECKPOINT_STEP_TAG = "dvdm.checkpoint_step"


class MlflowCallback:
    """`Trainer(callbacks=[MlflowCallback(client, run_id)])`; call `close()` (or use `with`) at the end.

    `prefix` namespaces the metric keys (e.g. `train/`); samples go to `samples/step_<step>/` in the run's
    artifacts; checkpoints are recorded as a tag (path) and uploaded only with `log_checkpoints=True`
    (they can be large; DVC already versions them).
    """

    def __init__(self, client: "MlflowClient", run_id: str, *, prefix: str = "", flush_every: int = 200,
                 flush_seconds: float = 15.0, samples_path: str = "samples", log_checkpoints: bool = False,
                 max_buffer: int = 100_000):
        self.client, self.run_id, self.prefix = client, run_id, prefix
        self.flush_every, self.flush_seconds = max(1, flush_every), flush_seconds
        self.samples_path, self.log_checkpoints, self.max_buffer = samples_path, log_checkpoints, max_buffer
        self._buffer: list = []
        self._last_flush = time.monotonic()
        self._logged_upto: int | None = None  # last step already in the run; looked up on the first step

    # -- Callback protocol ------------------------------------------------------------------------------
    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        values = numeric_metrics(metrics)
        if not values:
            return
        if self._logged_upto is None:
            self._logged_upto = self._last_logged_step(clean_key(self.prefix + next(iter(values))))
        if step <= self._logged_upto:
            return
        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(clean_key(self.prefix + k), v, ts, step) for k, v in values.items())
        if len(self._buffer) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def on_sample(self, step: int, paths: Sequence[Path]) -> None:
        self.flush()
        dest = f"{self.samples_path}/step_{step:06d}"
        for path in paths:
            if not Path(path).is_file():
                log.warning("sample %s does not exist; not logged to MLflow", path)
                continue
            self._safely(f"log sample {path}", lambda p=path: self.client.log_artifact(self.run_id, str(p), dest))

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.flush()
        self._safely("tag the checkpoint", lambda: set_tags(self.client, self.run_id, {
            CHECKPOINT_TAG: str(Path(path).resolve()), CHECKPOINT_STEP_TAG: step}))
        if self.log_checkpoints and Path(path).is_dir():
            self._safely(f"upload checkpoint {path}",
                         lambda: self.client.log_artifacts(self.run_id, str(path), "checkpoint"))

    # -- buffering --------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Send the buffered metrics now (kept for the next flush if MLflow fails)."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        if not self._safely(f"log {len(batch)} metric points", lambda: log_metric_batch(self.client, self.run_id,
                                                                                        batch)):
            self._buffer = (batch + self._buffer)[-self.max_buffer:]

    def close(self) -> None:
        self.flush()
        if self._buffer:
            log.warning("%d metric points could not be sent to MLflow run %s", len(self._buffer), self.run_id)

    def __enter__(self) -> "MlflowCallback":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------------------------
    def _last_logged_step(self, key: str) -> int:
        try:
            history = self.client.get_metric_history(self.run_id, key)
        except Exception:  # noqa: BLE001 - an unreadable history only disables the skip
            return -1
        return max((m.step for m in history), default=-1)

    def _safely(self, what: str, call) -> bool:
        try:
            call()
            return True
        except Exception as exc:  # noqa: BLE001 - tracking must not stop training (module doc)
            log.warning("MLflow: could not %s for run %s: %s", what, self.run_id, exc)
            return False
