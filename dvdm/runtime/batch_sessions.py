"""`BatchSizedSessions`: a graph with a dynamic batch axis, run by a session built for each batch size it sees.

An export keeps the batch axis dynamic (one file serves guided and unguided sampling, one clip or several), so
every Reshape in the graph computes its target shape at run time: Shape -> Gather -> Unsqueeze -> Concat chains.
A session whose batch axis is fixed (onnxruntime's free dimension override) folds them into constants (the
default denoiser: 1851 -> 746 nodes after onnxruntime's optimisation), and on a step of a few milliseconds the
per-node overhead is a large part of the time (benchmarks/onnx_vs_torch.py prints both). The denoiser runs
once per sampling step with one or two batch sizes per model (B, or 2B with guidance), so a session per size
pays its build time once; past `max_sizes` sizes the shared dynamic session serves the rest.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from dvdm.runtime.sessions import ProviderChoice, create_session


class BatchSizedSessions:
    """Quacks like the InferenceSession it wraps (`run`, `get_inputs`, `get_outputs`, `get_providers`)."""

    def __init__(self, model: str | os.PathLike[str], choice: ProviderChoice, threads: int | None = None, *,
                 axis: str = "batch", max_sizes: int = 4) -> None:
        self.model, self.choice, self.threads, self.axis, self.max_sizes = model, choice, threads, axis, max_sizes
        self.dynamic = create_session(model, choice, threads)
        self.batch_input = next((i.name for i in self.dynamic.get_inputs()
                                 if i.shape and i.shape[0] == axis), None)
        self._by_size: dict[int, Any] = {}
        self._lock = threading.Lock()

    def for_batch(self, size: int) -> Any:
        """The session fixed at `size` (built on first use), or the dynamic one past `max_sizes` sizes."""
        session = self._by_size.get(size)
        if session is not None:
            return session
        with self._lock:  # two requests must not both build the same session
            if size not in self._by_size and len(self._by_size) < self.max_sizes:
                self._by_size[size] = create_session(self.model, self.choice, self.threads, {self.axis: size})
            return self._by_size.get(size, self.dynamic)

    def run(self, output_names: Any, feeds: dict[str, Any], run_options: Any = None) -> list[Any]:
        if self.batch_input is None:
            return self.dynamic.run(output_names, feeds, run_options)
        return self.for_batch(len(feeds[self.batch_input])).run(output_names, feeds, run_options)

    def get_inputs(self) -> Any:
        return self.dynamic.get_inputs()

    def get_outputs(self) -> Any:
        return self.dynamic.get_outputs()

    def get_providers(self) -> Any:
        return self.dynamic.get_providers()

    @property
    def sizes(self) -> list[int]:
        return sorted(self._by_size)
