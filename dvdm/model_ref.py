"""What a `--model` option or `from_pretrained` accepts, and the local folder it names.

    models/diffusion          a training run folder (its `checkpoint/`), or that checkpoint folder itself
    models/export             an export folder (manifest.json + ONNX graphs): what serving runs
    models:/dvdm@champion     the registered version an alias points to
    models:/dvdm/3            registered version 3

A registered version is fetched with `dvdm.tracking.registry.download_version` from the store that
`dvdm.tracking.store` resolves ($MLFLOW_TRACKING_URI, else the embedded store of the work dir:
$DVDM_WORK_DIR or ./work). The main job registers the ONNX export; a pipeline without an export stage
registers the checkpoint, so a version may hold either kind, and `LocalModel.kind` says which.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dvdm.errors import ConfigError

CHECKPOINT, EXPORT = "checkpoint", "export"  # the two kinds of model folder
_REGISTRY_REF = re.compile(r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)(?:@(?P<alias>[A-Za-z_][A-Za-z0-9_\-]*)"
                           r"|/(?P<version>[0-9]+))$")
FORMS = "a training run folder, an export folder, models:/<name>@<alias> or models:/<name>/<version>"


class ModelRefError(ConfigError, ValueError):
    """A model reference that is malformed or names nothing loadable (a ValueError too, for library callers)."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: a local `path`, or a registry `name` with an `alias` or a fixed `version`."""

    raw: str
    path: Path | None = None
    name: str | None = None
    alias: str | None = None
    version: str | None = None

    @property
    def is_registry(self) -> bool:
        return self.name is not None

    @property
    def follows_alias(self) -> bool:
        return self.alias is not None


def parse_model_ref(ref: str | os.PathLike[str]) -> ModelRef:
    """`models:/<name>@<alias>`, `models:/<name>/<version>` or a local folder (ModelRefError otherwise)."""
    raw = os.fspath(ref)
    if not raw.strip():
        raise ModelRefError(f"model reference is empty: give {FORMS}")
    if raw.startswith("models:"):
        m = _REGISTRY_REF.match(raw)
        if m is None:
            raise ModelRefError(f"model reference {raw!r}: registry references look like models:/dvdm@champion or "
                                f"models:/dvdm/3")
        return ModelRef(raw, name=m["name"], alias=m["alias"], version=m["version"])
    if "://" in raw:
        raise ModelRefError(f"model reference {raw!r}: only models:/ registry references and local folders are "
                            f"supported")
    return ModelRef(raw, path=Path(raw).expanduser().resolve())


def checkpoint_folder(path: str | os.PathLike[str]) -> Path:
    """A training run folder -> its `checkpoint/`; any other path as it is (a checkpoint folder itself)."""
    p = Path(path)
    return p / "checkpoint" if (p / "checkpoint" / "config.json").is_file() else p


def model_kind(path: str | os.PathLike[str]) -> tuple[str, Path]:
    """(CHECKPOINT or EXPORT, the folder to load) for a local model folder; ModelRefError naming what it lacks."""
    p = Path(path)
    if not p.exists():
        raise ModelRefError(f"{p}: no such model folder (give {FORMS})")
    if not p.is_dir():
        raise ModelRefError(f"{p}: not a dvdm model: a file, expected a folder ({FORMS})")
    if (p / "manifest.json").is_file():
        return EXPORT, p
    folder = checkpoint_folder(p)
    if (folder / "config.json").is_file():
        return CHECKPOINT, folder
    raise ModelRefError(f"{p}: not a dvdm model: no checkpoint/config.json (a training run folder), config.json "
                        f"(a checkpoint folder) or manifest.json (an export folder)")


@dataclass
class LocalModel:
    """A model reference resolved to a local folder. A registry version lives in a temporary download that
    `close()` (or leaving the `with` block, or dropping the object) deletes."""

    ref: ModelRef
    kind: str                      # CHECKPOINT or EXPORT
    folder: Path                   # what to load: the checkpoint folder or the export folder
    version: str | None = None     # the registry version number
    _download: Any = field(default=None, repr=False)  # tempfile.TemporaryDirectory of a registry version

    @property
    def label(self) -> str:
        """How messages name it: the reference as given, with the version an alias resolved to."""
        if self.ref.follows_alias:
            return f"{self.ref.raw} (version {self.version})"
        return self.ref.raw

    def close(self) -> None:
        if self._download is not None:
            self._download.cleanup()
            self._download = None

    def __enter__(self) -> LocalModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def registry_uri(tracking_uri: str | None = None, work: str | os.PathLike[str] | None = None) -> str:
    """The tracking URI `models:/` references read (`dvdm.tracking.store.resolve_tracking_uri`). An embedded
    store that does not exist is an error, not a new empty database: the reference can only mean a store
    that registered the model."""
    from dvdm.tracking.store import resolve_tracking_uri, sqlite_path

    uri = resolve_tracking_uri(tracking_uri, work)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ModelRefError(f"no MLflow store at {db}: a models:/ reference reads the store that registered the "
                            f"model; run from the project folder, or set MLFLOW_TRACKING_URI (or DVDM_WORK_DIR)")
    return uri


def registry_client(tracking_uri: str | None = None, work: str | os.PathLike[str] | None = None) -> Any:
    """The MLflow client for `models:/` references (ModelRefError when the embedded store does not exist)."""
    from dvdm.tracking.store import open_client

    registry_uri(tracking_uri, work)
    return open_client(tracking_uri, work)


def fetch_model(ref: str | os.PathLike[str], *, tracking_uri: str | None = None,
                work: str | os.PathLike[str] | None = None) -> LocalModel:
    """The local folder `ref` names: a local folder as it is, a registry version downloaded (by number, so an
    alias that moves meanwhile cannot mix two versions) into a temporary folder."""
    parsed = parse_model_ref(ref)
    if not parsed.is_registry:
        assert parsed.path is not None
        kind, folder = model_kind(parsed.path)
        return LocalModel(parsed, kind, folder)
    from dvdm.tracking.registry import download_version, get_version

    assert parsed.name is not None
    client = registry_client(tracking_uri, work)
    version = str(get_version(client, parsed.alias or parsed.version or "", parsed.name).version)
    download = tempfile.TemporaryDirectory(prefix="dvdm-model-")
    try:
        dst = download_version(client, Path(download.name) / f"{parsed.name}-v{version}", ref=version,
                               name=parsed.name)
        kind, folder = model_kind(dst)
    except BaseException:
        download.cleanup()
        raise
    return LocalModel(parsed, kind, folder, version, download)
