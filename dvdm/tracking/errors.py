"""Errors of the tracking layer: `DvdmError`s, so the CLI prints one clear line instead of a traceback."""

from __future__ import annotations

from dvdm.errors import DvdmError


class TrackingError(DvdmError):
    """A tracking store, run, artifact or registered model that is missing or cannot be used as asked."""


class GateError(TrackingError):
    """The promotion gate cannot compare two versions (a missing or non-finite metric, a bad setting)."""
