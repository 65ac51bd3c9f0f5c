"""Typed settings, one dataclass per pipeline stage, loaded from a section of params.yaml.

params.yaml is the single source of truth (DVC tracks it per stage); CLI options override single keys.
Unknown keys are errors, not silently ignored, because a typo in a setting should never train the wrong
model. A key left out of params.yaml takes its field's default here, and every default equals the value of
the `default` preset (`dvdm/presets/default.yaml`, the main job), so a short params file means "the main
job, except ..." (`tests/test_stages_cli.py` checks it). Three dict fields hold overrides of defaults that
live elsewhere and default to {}: `ingest.options` (the source's own options), `train.unet` (`UNetConfig`)
and `train.diffusion` (`GaussianDiffusion.create`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dvdm.errors import ConfigError

T = TypeVar("T")


@dataclass
class IngestParams:
    """Which source to read and how clips are cut. `options` go to the source (see `dvdm sources`)."""

    source: str = "synthetic"
    frames: int = 8
    height: int = 64
    width: int = 64
    sampling: str = "uniform"
    stride: int = 1
    start: int = 0
    pad_short: bool = False
    clips_per_shard: int = 256
    compress: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    def clip_spec(self):
        """The ClipSpec these settings describe (validated there)."""
        from dvdm.data.base import ClipSpec

        return ClipSpec(frames=self.frames, height=self.height, width=self.width, sampling=self.sampling,
                        stride=self.stride, start=self.start, pad_short=self.pad_short)


@dataclass
class DecomposeParams:
    """Codec settings. block 0 = automatic (8 for clips up to 64x64, else 16); search 0 = same as block.
    differences: D-VDM's reference frame ("first", "previous") or "none" to skip them. match: the planes the
    motion search compares, "yuv" (luma + chroma) or "luma" (docs/DECISIONS.md)."""

    block: int = 0
    search: int = 0
    strategy: str = "fast"
    static_threshold: float = 0.0
    mv_source: str = "search"
    match: str = "yuv"
    differences: str = "first"
    verify: bool = True
    compress: bool = True


@dataclass
class TrainAEParams:
    """Residual autoencoder training (stage train-ae). The block size comes from the decomposed data."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    latent_channels: int = 5
    base_channels: int = 16
    kl: bool = False
    kl_weight: float = 1e-6
    ssim_weight: float = 0.2
    mse_weight: float = 1.0         # an MSE term beside L1: +2 dB residual PSNR (docs/DECISIONS.md)
    residual_scale: float = 0.0     # 0: the autoencoder's default
    ema_decay: float = 0.99
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    checkpoint_every: int = 100     # a killed run resumes from its last checkpoint
    eval_clips: int = 8
    max_seconds: float = 0.0         # > 0: stop after this much training time (a compute budget)


@dataclass
class TrainParams:
    """Diffusion training (stage train-diffusion). `unet` and `diffusion` hold UNetConfig / diffusion keys."""

    space: str = "mvres"
    steps: int = 4200
    batch_size: int = 16
    lr: float = 1e-3
    ema_decay: float = 0.995
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    text: bool = True
    diff_reference: str = "first"
    max_clips: int = 0               # 0: every training clip
    log_every: int = 25
    sample_every: int = 1200
    checkpoint_every: int = 300
    sample_steps: int = 25
    guidance: float = 1.0
    check_clips: int = 4             # at each sample: prompt-swap check on this many held-out first frames
    max_seconds: float = 0.0         # > 0: stop after this much training time (a compute budget)
    warmup_steps: int = 200          # linear learning-rate warm-up
    lr_schedule: str = "cosine"      # constant | cosine (to min_lr_ratio * lr at the last step)
    min_lr_ratio: float = 0.1
    dead_zone: float = 0.5           # mvres: |sampled vector| below this decodes to 0 (0.5 = plain rounding)
    unet: dict[str, Any] = field(default_factory=dict)
    diffusion: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateParams:
    """Evaluation of a trained model on held-out clips (stage evaluate)."""

    split: str = "test"              # held-out split to sample (falls back to val)
    max_clips: int = 16              # 0: every clip of the split
    samples_per_clip: int = 1        # generated videos per held-out clip (BAIR protocol: 100)
    steps: int = 25                  # sampling steps
    guidance: float = 1.0            # classifier-free guidance scale (the paper samples with 1.0)
    sampler: str = "ddim"
    seed: int = 0                    # clip i uses seed + i
    batch_size: int = 4
    fvd: bool = True                 # FVD/KVD with I3D (skipped with the reason when the weights are absent)
    fvd_frames: int = 0              # frames per clip for FVD (0: the protocol's 16; >= 9 for own comparisons)
    grid_clips: int = 4              # rows of the ground-truth | generated grid
    fps: float = 8.0
    device: str = "auto"
    prompt_swap_clips: int = 16      # held-out first frames generated with every direction x speed prompt (0: off)
    prompt_swap_drawn: int = 8       # first frames drawn with PIL (plain + textured backgrounds), same prompts
    prompt_swap_guidance: float = 2.0  # guidance of the prompt-swap samples (0: `guidance`)


@dataclass
class ExportParams:
    """ONNX export for serving (stage export): graphs + manifest + parity report."""

    weights: str = "ema"             # ema | model
    opset: int = 17
    steps: int = 15                  # sampler defaults written into the manifest
    guidance: float = 2.0
    eta: float = 0.0
    sampler: str = "dpm++"           # dpm++ (DPM-Solver++(2M), deterministic: eta 0) | ddim
    parity_steps: int = 8            # end-to-end ORT vs torch check
    min_psnr: float = 40.0           # the export fails below this end-to-end PSNR


@dataclass
class PromoteParams:
    """The promotion gate: a challenger becomes champion only when it beats the champion on `metric`."""

    metric: str = "swap_direction_accuracy"  # a number of the evaluate stage's results.json
    direction: str = "max"           # min: lower is better (FVD); max: higher is better (PSNR, accuracy)
    margin: float = 0.0              # required improvement (absolute, or a fraction when relative)
    relative: bool = False


PLACEMENT_MODES = ("local", "pools")


@dataclass
class PlacementParams:
    """Where the flows run each stage. No stage reads this section, so changing it reruns nothing.

    local: every stage in the flow's own process (the embedded default). pools: each stage is a run of a
    `dvdm-stage` deployment (`deployments`: stage name -> deployment, `default` for the rest), on that
    deployment's work pool; workers clone the project from `git_url` (default: the project's `origin`) at
    the orchestrator's commit and move data only through the DVC remote `dvc_remote` (any DVC remote URL).
    A placed stage whose run fails or crashes is sent again up to `retries` times, `retry_delay_seconds` apart;
    a training stage's retry continues from the last checkpoint an earlier attempt saved."""

    mode: str = "local"
    deployments: dict[str, str] = field(default_factory=lambda: {
        "default": "dvdm-stage/cpu", "train-ae": "dvdm-stage/gpu", "train-diffusion": "dvdm-stage/gpu"})
    dvc_remote: str = ""
    git_url: str = ""
    retries: int = 2
    retry_delay_seconds: int = 10

    def __post_init__(self) -> None:
        for name in ("retries", "retry_delay_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"placement.{name} must be >= 0, got {getattr(self, name)}")
        if self.mode not in PLACEMENT_MODES:
            raise ConfigError(f"placement.mode must be one of {', '.join(PLACEMENT_MODES)}, got {self.mode!r}")
        if "default" not in self.deployments:
            raise ConfigError("placement.deployments needs a `default` entry (the deployment of every other stage)")

    def deployment(self, stage: str) -> str:
        return self.deployments.get(stage, self.deployments["default"])


SECTIONS = {"ingest": IngestParams, "decompose": DecomposeParams, "train_ae": TrainAEParams,
            "train": TrainParams, "evaluate": EvaluateParams,
            "export": ExportParams, "promote": PromoteParams, "placement": PlacementParams}


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build a params dataclass, naming unknown keys and wrong types."""
    data = dict(data or {})
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(names)}")
    defaults = cls()
    for key, value in data.items():
        expected = type(getattr(defaults, key))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            data[key] = float(value)
        elif expected is float and isinstance(value, str):
            # YAML 1.1 reads `1e-5` (no dot) as a string: `--set lr=1e-5` must still mean the number
            try:
                data[key] = float(value)
            except ValueError:
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}") from None
        elif expected is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
        elif expected is bool and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true/false, got {value!r}")
        elif expected is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
        elif expected in (str, dict) and not isinstance(value, expected):
            raise ConfigError(f"{where}.{key}: expected {expected.__name__}, got {value!r}")
    return cls(**data)


def load_params(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The whole params.yaml as a dict ({} when `path` is None)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: params file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` with the value parsed as YAML (so numbers and booleans keep their types)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def section(path: str | os.PathLike[str] | None, name: str, overrides: list[str] | None = None) -> Any:
    """Load section `name` of params.yaml as its dataclass, with `key=value` overrides applied.
    Dotted keys reach into dicts (`options.num_train=8`)."""
    data = dict(load_params(path).get(name) or {})
    for text in overrides or []:
        key, value = parse_override(text)
        target = data
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key}: {part} is not a mapping")
        target[parts[-1]] = value
    return from_dict(SECTIONS[name], data, f"params {name}")


def as_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)
