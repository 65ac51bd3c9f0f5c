"""Errors that mean "your input is wrong", as opposed to bugs.

The CLI turns every `DvdmError` into one clear line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback. Messages name the offending file or setting and the problem.
"""

from __future__ import annotations


class DvdmError(Exception):
    """Base class: a problem with the user's input, data or settings."""

    exit_code = 2


class VideoError(DvdmError):
    """A video file or frame folder that cannot be read, or is not what was asked for."""


class ClipTooShortError(VideoError):
    """A clip with fewer frames than requested."""


class DataError(DvdmError):
    """A dataset tree, captions file, manifest or shard that is missing or malformed."""


class ConfigError(DvdmError):
    """A setting in params.yaml or on the command line that is invalid."""
