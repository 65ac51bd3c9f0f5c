"""Choosing the ONNX Runtime execution provider, and opening sessions that really run on it.

onnxruntime-gpu lists `CUDAExecutionProvider` even on machines without a GPU (or with the wrong
CUDA/cuDNN), and a session asked for CUDA then silently runs on CPU (STACK.md, STYLE.md C6). So CUDA is
chosen only when a tiny probe session *reports* CUDA as its active provider *and* computes the right
answer; otherwise CPU, with the reason. The decision is logged once per choice as a single line, e.g.

    serving: onnxruntime 1.32.0 runs on CPUExecutionProvider (CUDAExecutionProvider is not in this build ...)

and every real session is checked again (`session.get_providers()`): a session that lands on another
provider than chosen raises `ProviderError` rather than serving slowly without a word.
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from dvdm.runtime import cpus
from dvdm.runtime.errors import ProviderError

log = logging.getLogger("dvdm.runtime.sessions")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PREFERENCES = ("auto", "cuda", "cpu")

# y = x + x on a float[1] input, opset 17 (built once with onnx.helper; embedded so serving needs no `onnx`).
_PROBE_MODEL = base64.b64decode(
    "CAgSCmR2ZG0tcHJvYmU6OQoOCgF4CgF4EgF5IgNBZGQSBXByb2JlWg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIECgIIAUIECgAQEQ==")


@dataclass(frozen=True)
class ProviderChoice:
    """The provider sessions will use: `name` ("cuda" or "cpu"), the provider list to pass, and why."""

    name: str
    providers: tuple[str, ...]
    reason: str

    @property
    def provider(self) -> str:
        return self.providers[0]


def _probe_cuda() -> str | None:
    """None when a CUDA session really runs; otherwise the reason it does not."""
    if CUDA not in ort.get_available_providers():
        return (f"{CUDA} is not in this onnxruntime build (providers: {', '.join(ort.get_available_providers())}); "
                f"install onnxruntime-gpu for GPU serving")
    options = ort.SessionOptions()
    options.log_severity_level = 4
    # onnxruntime-gpu logs a red error while failing to load the CUDA libraries; the reason is reported here.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(_PROBE_MODEL, options, providers=[CUDA, CPU])
        active = session.get_providers()
        if not active or active[0] != CUDA:
            return (f"{CUDA} is listed but failed to initialise (CUDA/cuDNN libraries missing or mismatched, "
                    f"or no GPU); onnxruntime fell back to {active}")
        out = session.run(None, {"x": np.array([1.5], np.float32)})[0]
        if out.shape != (1,) or float(out[0]) != 3.0:
            return f"{CUDA} probe session returned {out!r} instead of [3.0]"
    except Exception as exc:  # onnxruntime raises its own exception types
        return f"{CUDA} probe session failed: {type(exc).__name__}: {exc}"
    finally:
        ort.set_default_logger_severity(2)
    return None


def choose_provider(prefer: str = "auto") -> ProviderChoice:
    """CUDA when present and a probe session actually runs on it (unless `prefer="cpu"`), else CPU.

    `prefer="cuda"` makes an unusable CUDA an error (ProviderError) instead of a fallback. Logs one line.
    """
    if prefer not in PREFERENCES:
        raise ProviderError(f"provider preference must be one of {', '.join(PREFERENCES)}, got {prefer!r}")
    if prefer == "cpu":
        choice = ProviderChoice("cpu", (CPU,), "CPU requested")
    else:
        problem = _probe_cuda()
        if problem is None:
            choice = ProviderChoice("cuda", (CUDA, CPU), "a CUDA probe session ran on the GPU")
        elif prefer == "cuda":
            raise ProviderError(f"CUDA requested but not usable: {problem}")
        else:
            choice = ProviderChoice("cpu", (CPU,), problem)
    log.info("serving: onnxruntime %s runs on %s (%s)", ort.__version__, choice.provider, choice.reason)
    return choice


def session_options(threads: int | None = None, fixed_dims: dict[str, int] | None = None,
                    spinning: bool | None = None) -> ort.SessionOptions:
    """Full graph optimisation; `threads` intra-op threads (None: `cpus.ort_threads`, the CPUs this process
    may use); no spin-waiting between operators unless `cpus.ort_spinning` allows it (see `dvdm.runtime.cpus`:
    a spinning pool on a shared core slows every request down several times). `fixed_dims`: named dynamic
    axes given a fixed size (onnxruntime's free dimension override; see `dvdm.runtime.batch_sessions`).
    `spinning`: force spin-waiting on or off (None: `cpus.ort_spinning`)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for axis, size in (fixed_dims or {}).items():
        options.add_free_dimension_override_by_name(axis, int(size))
    threads = cpus.ort_threads() if threads is None else threads
    if threads is not None:
        if threads < 1:
            raise ProviderError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if not (cpus.ort_spinning() if spinning is None else spinning):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def create_session(model: str | os.PathLike[str] | bytes, choice: ProviderChoice,
                   threads: int | None = None, fixed_dims: dict[str, int] | None = None) -> ort.InferenceSession:
    """An InferenceSession on `choice`'s provider; ProviderError if onnxruntime put it elsewhere."""
    source = model if isinstance(model, bytes) else str(model)
    session = ort.InferenceSession(source, session_options(threads, fixed_dims), providers=list(choice.providers))
    active = session.get_providers()
    if not active or active[0] != choice.provider:
        name = "<bytes>" if isinstance(model, bytes) else os.fspath(model)
        raise ProviderError(f"{name}: session runs on {active} although {choice.provider} was chosen; "
                            f"onnxruntime fell back silently (check CUDA/cuDNN versions)")
    return session
