"""Data sources by name, and building one from a config's `source` + `options`.

Every source class is built as `Source(spec, **options)`; its constructor signature is the list of options
(checked here, so a typo in params.yaml is a ConfigError naming the option) and `options_help()` describes
them for the CLI.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from dvdm.data.bair import BairSource
from dvdm.data.base import ClipSpec, Source
from dvdm.data.folder import FolderSource
from dvdm.data.mhad import MhadSource
from dvdm.data.natops import NatopsSource
from dvdm.errors import ConfigError

SOURCES: dict[str, type] = {
    "folder": FolderSource,
    "bair": BairSource,
    "mhad": MhadSource,
    "natops": NatopsSource,
}


def _synthetic() -> type | None:
    try:  # the embedded default source lives in its own module; the registry works without it
        from dvdm.data.synthetic import SyntheticSource
    except ImportError:
        return None
    return SyntheticSource


if _synthetic() is not None:
    SOURCES["synthetic"] = _synthetic()  # type: ignore[assignment]


def _all_sources() -> dict[str, type]:
    sources = dict(SOURCES)
    if "synthetic" not in sources and (synthetic := _synthetic()) is not None:
        sources["synthetic"] = synthetic
    return sources


def source_names() -> list[str]:
    """Names of the sources that can be built here, sorted."""
    return sorted(_all_sources())


def get_source_class(name: str) -> type:
    sources = _all_sources()
    if name not in sources:
        raise ConfigError(f"unknown data source {name!r}; known sources: {', '.join(sorted(sources))}")
    return sources[name]


def _option_params(cls: type) -> tuple[list[inspect.Parameter], bool]:
    """The constructor's options (everything after `spec`) and whether it takes **kwargs."""
    params = list(inspect.signature(cls).parameters.values())
    if params and params[0].name == "spec":
        params = params[1:]
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    named = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    return named, var_kw


def source_options(name: str) -> dict[str, Any]:
    """{option: default} for a source (`inspect.Parameter.empty` marks a required option)."""
    params, _ = _option_params(get_source_class(name))
    return {p.name: p.default for p in params}


def options_help(name: str) -> dict[str, str]:
    """{option: description} for a source, for CLI help."""
    cls = get_source_class(name)
    helper = getattr(cls, "options_help", None)
    described = dict(helper()) if callable(helper) else {}
    for option in source_options(name):
        described.setdefault(option, "")
    return described


def build_source(name: str, spec: ClipSpec, options: Mapping[str, Any] | None = None) -> Source:
    """Build source `name` with `options`; unknown or missing options are ConfigErrors naming them."""
    cls = get_source_class(name)
    if not isinstance(spec, ClipSpec):
        raise ConfigError(f"source {name!r}: spec must be a ClipSpec, got {type(spec).__name__}")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"source {name!r}: options must be a mapping, got {type(options).__name__}")
    params, var_kw = _option_params(cls)
    known = [p.name for p in params]
    unknown = sorted(str(k) for k in options if k not in known)
    if unknown and not var_kw:
        raise ConfigError(f"source {name!r}: unknown option{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)}; valid options: {', '.join(known) or '(none)'}")
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in options]
    if missing:
        raise ConfigError(f"source {name!r}: missing required option{'s' if len(missing) > 1 else ''} "
                          f"{', '.join(missing)}")
    return cls(spec, **dict(options))
