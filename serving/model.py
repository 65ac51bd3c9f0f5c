"""Which model the service runs, and swapping in a newly promoted one without dropping requests.

A model reference is either a local export folder (loaded once) or a registry reference:

    models:/dvdm@champion   follow the alias: polled, a newly promoted version is downloaded and swapped in
    models:/dvdm/3          one fixed version (loaded once)

`ModelManager.current` is the `LoadedModel` (pipeline + which version it is) that new requests get. A request
reads it once and keeps that object to the end, so a swap (one reference assignment) never changes the model
under a running request: the old pipeline stays alive until its last request drops it. A new version is
downloaded into a fresh folder, loaded, checked (sha256 of every file) and warmed up *before* the swap; if
any of that fails the old model keeps serving and the error is reported by /readyz and /v1/model.

Registry access goes through an explicit `MlflowClient` (`dvdm.tracking.store.open_client`) and
`dvdm.tracking.registry`, never MLflow's process-global URI or fluent API. Neither imports torch.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dvdm.model_ref import ModelRef
from dvdm.runtime.pipeline import OrtVideoPipeline
from serving.settings import ServeSettings

log = logging.getLogger("serving.model")

VERSION_FILE = "model_version.json"  # written by dvdm.tracking.registry.download_version beside the files


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LoadedModel:
    """One loaded model and where it came from. Immutable: a swap replaces the whole object."""

    pipeline: OrtVideoPipeline
    folder: Path
    name: str | None = None
    version: str | None = None      # registry version number (None: a local folder of unknown version)
    alias: str | None = None        # the alias it was loaded through
    source: str | None = None       # the registry version's source URI
    run_id: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    loaded_at: str = field(default_factory=_now)
    owned: bool = False             # a download of ours: deleted when swapped out

    @property
    def label(self) -> str:
        return self.version if self.version is not None else "local"

    def headers(self) -> dict[str, str]:
        """Response headers naming the model that made a video."""
        out = {"X-Model-Version": self.label, "X-Model-Provider": self.pipeline.provider}
        if self.name:
            out["X-Model-Name"] = self.name
        if self.alias:
            out["X-Model-Alias"] = self.alias
        return out

    def describe(self) -> dict[str, Any]:
        info = self.pipeline.info()
        return {"name": self.name, "version": self.version, "alias": self.alias, "label": self.label,
                "source": self.source, "run_id": self.run_id, "metrics": self.metrics, "tags": self.tags,
                "loaded_at": self.loaded_at, "provider": self.pipeline.provider,
                "provider_reason": info.get("provider_reason"),
                "manifest": {k: info.get(k) for k in ("space", "frames", "height", "width", "text", "num_timesteps",
                                                      "sampler", "dvdm_version", "exported_at")}}


def _version_metrics(client: Any, version: Any) -> dict[str, float | None]:
    """The version's metrics (`registry.version_metrics`: its source run's, over any older `metric.*` tags);
    non-finite values as None, so /v1/model stays valid JSON."""
    from dvdm.tracking.registry import version_metrics

    return {k: (v if math.isfinite(v) else None) for k, v in sorted(version_metrics(client, version).items())}


class ModelManager:
    """Holds the current model; `refresh()` loads it, and for an alias reference swaps in a new version.

    Thread-safe: `refresh` runs in a worker thread (one at a time, under a lock); `current` is read by
    request handlers without a lock (reading one attribute is atomic).
    """

    def __init__(self, ref: ModelRef, settings: ServeSettings) -> None:
        self.ref = ref
        self.settings = settings
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.last_check: str | None = None
        self.swaps = 0
        self._lock = threading.Lock()
        self._choice = None
        self._client: Any = None
        self._cache: Path | None = None
        self._own_cache = False
        self._closed = False

    @property
    def polls(self) -> bool:
        """Whether the alias is followed after the first load."""
        return self.ref.follows_alias and self.settings.poll_interval > 0

    # ------------------------------------------------------------------ loading
    def _load_pipeline(self, folder: Path) -> OrtVideoPipeline:
        from dvdm.runtime.sessions import choose_provider

        if self._choice is None:  # probe once: later loads reuse the decision (and its one log line)
            self._choice = choose_provider(self.settings.provider)
        pipe = OrtVideoPipeline.from_export(folder, choice=self._choice, threads=self.settings.session_threads)
        if self.settings.warmup:  # a model that cannot generate is never swapped in
            pipe.generate(np.full((pipe.height, pipe.width, 3), 127, np.uint8), "warm-up", steps=1, seed=0)
        return pipe

    def _load_local(self) -> LoadedModel:
        folder = self.ref.path
        assert folder is not None
        pipe = self._load_pipeline(folder)
        meta: dict[str, Any] = {}
        try:  # a folder written by download_version says which registry version it holds
            meta = json.loads((folder / VERSION_FILE).read_text())
            if not isinstance(meta, dict):
                meta = {}
        except (OSError, ValueError):
            meta = {}
        version = meta.get("version")
        return LoadedModel(pipe, folder, name=meta.get("name") if isinstance(meta.get("name"), str) else None,
                           version=str(version) if isinstance(version, int) else None,
                           source=meta.get("source") if isinstance(meta.get("source"), str) else None)

    def _client_(self) -> Any:
        if self._client is None:
            from dvdm.tracking.store import open_client

            self._client = open_client(self.settings.tracking_uri)
        return self._client

    def _cache_dir(self) -> Path:
        if self._cache is None:
            if self.settings.model_cache:
                self._cache = Path(self.settings.model_cache).expanduser().resolve()
                self._cache.mkdir(parents=True, exist_ok=True)
            else:
                self._cache = Path(tempfile.mkdtemp(prefix="dvdm-serve-models-"))
                self._own_cache = True
        return self._cache

    def _load_registry(self, version: Any) -> LoadedModel:
        from dvdm.tracking.registry import METRIC_TAG_PREFIX, download_version

        name = self.ref.name
        assert name is not None
        folder = self._cache_dir() / f"{name}-v{int(version.version)}-{uuid.uuid4().hex[:8]}"
        try:
            # by number, not alias: the alias may move while we download
            download_version(self._client_(), folder, ref=str(version.version), name=name)
            pipe = self._load_pipeline(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        metrics = _version_metrics(self._client_(), version)
        tags = {k: v for k, v in sorted((version.tags or {}).items()) if not k.startswith(METRIC_TAG_PREFIX)}
        return LoadedModel(pipe, folder, name=name, version=str(version.version), alias=self.ref.alias,
                           source=version.source, run_id=version.run_id, metrics=metrics, tags=tags, owned=True)

    def refresh(self) -> bool:
        """Load the model if none is loaded; for an alias, load and swap in the version it now points to.
        True when the current model changed. Errors are logged and kept in `last_error`, never raised: the
        model already loaded (if any) keeps serving."""
        with self._lock:
            if self._closed:
                return False
            self.last_check = _now()
            try:
                changed = self._refresh()
                self.last_error = None
                return changed
            except Exception as exc:  # a broken export, an unreachable registry, ...: keep the old model
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("serving: could not load %s: %s", self.ref.raw, self.last_error)
                return False

    def _refresh(self) -> bool:
        if not self.ref.is_registry:
            if self.current is not None:
                return False
            self._swap(self._load_local())
            return True
        if self.current is not None and not self.ref.follows_alias:
            return False  # a fixed version never changes
        from dvdm.tracking.registry import get_version

        target = get_version(self._client_(), self.ref.alias or self.ref.version, self.ref.name)
        if self.current is not None and self.current.version == str(target.version):
            return False
        log.info("serving: %s -> version %s; downloading and loading it", self.ref.raw, target.version)
        self._swap(self._load_registry(target))
        return True

    def _swap(self, new: LoadedModel) -> None:
        old, self.current = self.current, new  # the swap: new requests get `new` from here on
        if old is not None:
            self.swaps += 1
            log.info("serving: swapped model %s -> %s (%s)", old.label, new.label, self.ref.raw)
            self._discard(old)
        else:
            log.info("serving: model %s ready (%s, %s)", new.label, self.ref.raw, new.pipeline.provider)

    @staticmethod
    def _discard(old: LoadedModel) -> None:
        # Safe with requests still running on `old`: its ONNX sessions and tokenizer are in memory.
        if old.owned:
            shutil.rmtree(old.folder, ignore_errors=True)

    def close(self) -> None:
        """Delete what this manager downloaded. The current model object stays usable (in memory)."""
        with self._lock:
            self._closed = True
            if self.current is not None:
                self._discard(self.current)
            if self._own_cache and self._cache is not None:
                shutil.rmtree(self._cache, ignore_errors=True)

    def status(self) -> dict[str, Any]:
        return {"ref": self.ref.raw, "follows_alias": self.ref.follows_alias,
                "poll_interval": self.settings.poll_interval if self.polls else None,
                "last_check": self.last_check, "last_error": self.last_error, "swaps": self.swaps}
