"""The export's error type (a `DvdmError`, so the CLI prints one line and exits non-zero)."""

from __future__ import annotations

from dvdm.errors import DvdmError


class ExportError(DvdmError):
    """A checkpoint that cannot be exported, or an export that fails its parity checks."""
