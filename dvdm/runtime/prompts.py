"""What a batch of prompts must be, for the torch text encoder and the ONNX one alike."""

from __future__ import annotations

from collections.abc import Sequence

from dvdm.runtime.errors import InvalidRequest


def prompt_list(prompts: Sequence[str]) -> list[str]:
    """`prompts` as a list of strings; InvalidRequest (a ValueError) for a bare string or a non-string."""
    if isinstance(prompts, str):
        raise InvalidRequest("encode expects a list of prompts, not a single string")
    prompts = list(prompts)
    for p in prompts:
        if not isinstance(p, str):
            raise InvalidRequest(f"prompts must be strings, got {type(p).__name__}: {p!r}")
    return prompts
