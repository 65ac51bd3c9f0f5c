"""Settings of the HTTP service: where the model comes from, the request limits and the concurrency limit.

Every field can be set from the environment as `DVDM_SERVE_<FIELD>` (upper case), e.g.
`DVDM_SERVE_MAX_UPLOAD_BYTES=5000000` or `DVDM_SERVE_POLL_INTERVAL=10`; explicit keyword arguments to
`ServeSettings.from_env(...)` win over the environment, which wins over the defaults below.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "DVDM_SERVE_"
API_KEY_FILE_VAR = ENV_PREFIX + "API_KEY_FILE"  # not a field: read into api_key by from_env
MIN_API_KEY_CHARS = 16
DEFAULT_MODEL_REF = "models:/dvdm@champion"


@dataclass(frozen=True)
class ServeSettings:
    """What `serving.app.create_app` needs besides the model reference. All limits are per request."""

    # --- the model
    tracking_uri: str | None = None      # MLflow store for `models:/` refs (None: dvdm.tracking's default resolution)
    model_cache: str | None = None       # where registry versions are downloaded (None: a temp folder per process)
    provider: str = "auto"               # onnxruntime provider preference: auto | cuda | cpu
    threads: int | None = None           # onnxruntime intra-op threads per session (None: timed at load, the
    #                                      faster of all our CPUs and one: dvdm.runtime.thread_choice)
    poll_interval: float = 30.0          # seconds between registry alias checks (0: never; local folders never poll)
    warmup: bool = True                  # run a 1-step generation on a newly loaded model before it serves
    # --- request limits
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096        # width * height of the uploaded image, checked before it is decoded
    max_steps: int = 200                 # steps are limited to 1..min(max_steps, the model's num_timesteps)
    max_prompt_chars: int = 1000
    min_guidance: float = 0.0
    max_guidance: float = 20.0
    # --- concurrency
    max_concurrency: int = 1             # generations running at once (each on `threads` intra-op threads)
    max_queue: int = 8                   # requests allowed to wait for a slot; beyond that: 429 + Retry-After
    retry_after: int = 2                 # seconds, the Retry-After of a 429/503
    # --- access control (serving.access; README "Security model")
    api_key: str | None = dataclasses.field(default=None, repr=False)  # bearer token; DVDM_SERVE_API_KEY or
    #                                      DVDM_SERVE_API_KEY_FILE (a file keeps it out of `ps` and the shell history)
    allow_no_auth: bool = False          # serve a non-loopback address without a token (a proxy authenticates)
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted besides loopback and the bound address; "*": any
    # --- output
    fps: float = 8.0
    # --- the work an upload may cause after decoding (issue 13)
    max_aspect_ratio: float = 16.0       # long side / short side of the uploaded image, checked before decoding:
    #                                      scaling the short side up to the model's size makes the resized frame
    #                                      this many times the model's area, whatever the pixel count
    disconnect_poll: float = 0.1         # seconds between checks that a generating client is still connected

    @property
    def session_threads(self) -> int | str:
        """What the ORT pipeline is loaded with: the set count, or "auto" (timed at load)."""
        from dvdm.runtime.thread_choice import AUTO

        return self.threads if self.threads is not None else AUTO

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_upload_bytes", "max_pixels", "max_steps", "max_prompt_chars", "max_concurrency",
                     "retry_after"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue < 0:
            problems.append(f"max_queue must be >= 0, got {self.max_queue}")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be >= 1 or None, got {self.threads}")
        if not (math.isfinite(self.poll_interval) and self.poll_interval >= 0):
            problems.append(f"poll_interval must be a number >= 0, got {self.poll_interval}")
        if not (math.isfinite(self.min_guidance) and math.isfinite(self.max_guidance)
                and 0 <= self.min_guidance <= self.max_guidance):
            problems.append(f"guidance range must satisfy 0 <= min_guidance <= max_guidance, got "
                            f"{self.min_guidance}..{self.max_guidance}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            problems.append(f"fps must be > 0, got {self.fps}")
        if self.provider not in ("auto", "cuda", "cpu"):
            problems.append(f"provider must be auto, cuda or cpu, got {self.provider!r}")
        problems += self._check_access()
        if not (math.isfinite(self.max_aspect_ratio) and self.max_aspect_ratio >= 1):
            problems.append(f"max_aspect_ratio must be a number >= 1, got {self.max_aspect_ratio}")
        if not (math.isfinite(self.disconnect_poll) and self.disconnect_poll > 0):
            problems.append(f"disconnect_poll must be a number > 0, got {self.disconnect_poll}")
        if problems:
            raise ValueError("invalid serve settings: " + "; ".join(problems))

    def _check_access(self) -> list[str]:
        """The problems with the token's shape (never showing it) and with `allowed_hosts`, which it normalises
        to bare lower-case names (a comma-separated string is accepted too)."""
        from serving.access import ANY_HOST, host_name

        problems = []
        if self.api_key is not None and not (len(self.api_key) >= MIN_API_KEY_CHARS and self.api_key.isascii()
                                             and self.api_key.isprintable() and " " not in self.api_key):
            problems.append(f"api_key must be at least {MIN_API_KEY_CHARS} printable ASCII characters without "
                            f"spaces (make one with: python -c \"import secrets; print(secrets.token_urlsafe(32))\")")
        entries = ([e for e in self.allowed_hosts.split(",") if e.strip()] if isinstance(self.allowed_hosts, str)
                   else self.allowed_hosts)
        hosts = []
        for entry in (e.strip() for e in entries):
            name = ANY_HOST if entry == ANY_HOST else host_name(entry)
            with_port = "]:" in entry if entry.startswith("[") else entry.count(":") == 1
            if name is None or with_port:  # the Host check ignores ports: a listed port would mislead
                problems.append(f"allowed_hosts entries are host names or IP addresses without scheme or port, "
                                f"got {entry[:100]!r}")
            else:
                hosts.append(name)
        object.__setattr__(self, "allowed_hosts", tuple(hosts))
        return problems

    @property
    def max_request_bytes(self) -> int:
        """The whole multipart body: the image plus room for the form fields and the multipart framing."""
        return self.max_upload_bytes + 64 * 1024 + 4 * self.max_prompt_chars

    def replace(self, **changes: Any) -> ServeSettings:
        return dataclasses.replace(self, **changes)

    def limits(self) -> dict[str, Any]:
        """The request limits, as /v1/model reports them to clients (and the web page)."""
        return {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
                "max_aspect_ratio": self.max_aspect_ratio,
                "max_steps": self.max_steps, "max_prompt_chars": self.max_prompt_chars,
                "guidance": [self.min_guidance, self.max_guidance], "formats": ["mp4", "gif"],
                "max_concurrency": self.max_concurrency, "max_queue": self.max_queue}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> ServeSettings:
        """Defaults, then `DVDM_SERVE_*` variables, then `overrides` (None values in `overrides` are ignored,
        so a CLI can pass its options straight through)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f.name, str(f.type), raw.strip())
        key_file = overrides.pop("api_key_file", None)
        if key_file is not None and overrides.get("api_key") is not None:
            raise ValueError("give the API key or a file holding it, not both")
        if key_file is None and overrides.get("api_key") is None:  # explicit arguments win over the environment
            key_file = env.get(API_KEY_FILE_VAR, "").strip() or None
            if key_file is not None and "api_key" in values:
                raise ValueError(f"set {ENV_PREFIX}API_KEY or {API_KEY_FILE_VAR}, not both")
        if key_file is not None:
            values["api_key"] = read_api_key_file(key_file)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown serve settings: {', '.join(sorted(unknown))}")
        return cls(**values)


def read_api_key_file(path: str | os.PathLike[str]) -> str:
    """The token in `path`: its one non-empty line, surrounding whitespace stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"API key file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"API key file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"API key file {path}: expected the token alone on one line, found {len(lines)} "
                         f"non-empty lines")
    return lines[0]


def _parse(name: str, kind: str, raw: str) -> Any:
    var = ENV_PREFIX + name.upper()
    try:
        if kind.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("tuple"):  # a comma-separated list
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        return raw
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a valid {kind.split(' ')[0]}") from None
