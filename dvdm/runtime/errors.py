"""Errors of the runtime core, shared by the library and the service.

`InvalidRequest` is a `ValueError`: the caller's input is wrong (the HTTP layer answers 4xx). The manifest
errors mean an export folder is not usable (the service refuses to load that model).
"""

from __future__ import annotations


class RuntimeCoreError(Exception):
    """Base class of everything the runtime core (and the service on top of it) raises on purpose."""


class ManifestError(RuntimeCoreError):
    """An export folder whose manifest is missing, malformed or from an unsupported format version."""


class ExportIntegrityError(ManifestError):
    """A file of the export folder is missing or its sha256 differs from the manifest (tampered or corrupt)."""


class ProviderError(RuntimeCoreError):
    """The requested ONNX Runtime execution provider is not usable (e.g. CUDA asked for, CPU delivered)."""


class InvalidRequest(RuntimeCoreError, ValueError):
    """A request the model cannot serve: wrong image shape/dtype, steps out of range, bad prompt, ..."""


class GenerationCancelled(RuntimeCoreError):
    """The caller's `should_stop` said stop (e.g. its HTTP client hung up): sampling ended between two steps."""
