"""Errors of the serving side. Each names the file, field or value at fault and what to do about it.

They are the runtime core's (`dvdm.runtime.errors`), which runs the exported model under the service;
`ServingError` is their base. `InvalidRequest` is a `ValueError` (the HTTP layer answers 4xx).
"""

from __future__ import annotations

from dvdm.runtime.errors import ExportIntegrityError, InvalidRequest, ManifestError, ProviderError
from dvdm.runtime.errors import RuntimeCoreError as ServingError

__all__ = ["ExportIntegrityError", "InvalidRequest", "ManifestError", "ProviderError", "ServingError"]
