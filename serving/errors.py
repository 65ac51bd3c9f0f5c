"""Errors of the serving side. Each names the file, field or value at fault and what to do about it.

`InvalidRequest` is a `ValueError`: the caller's input is wrong (the HTTP layer answers 4xx). The others
mean the export folder or the machine is not usable (the service refuses to load that model).
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class of everything `serving` raises on purpose."""


class ManifestError(ServingError):
    """An export folder whose manifest is missing, malformed or from an unsupported format version."""


class ExportIntegrityError(ManifestError):
    """A file of the export folder is missing or its sha256 differs from the manifest (tampered or corrupt)."""


class ProviderError(ServingError):
    """The requested ONNX Runtime execution provider is not usable (e.g. CUDA asked for, CPU delivered)."""


class InvalidRequest(ServingError, ValueError):
    """A request the model cannot serve: wrong image shape/dtype, steps out of range, bad prompt, ..."""
