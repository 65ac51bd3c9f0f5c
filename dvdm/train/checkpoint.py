"""Complete checkpoints as a directory: JSON config, safetensors weights, a weights-only trainer state.

```
ckpt/
  config.json          format marker, kind, package version, model/space/diffusion/training config, step
  model.safetensors    raw weights            ema.safetensors    EMA weights (what sampling uses)
  autoencoder.safetensors  (ED-VDM models: the residual codec travels with the denoiser)
  trainer_state.pt     optimizer, grad scaler, step, RNG states (loaded with weights_only=True)
```
Loading never executes code from the files: safetensors for weights, `torch.load(weights_only=True)` for
the trainer state, JSON for the rest. Checkpoints are written into a temporary sibling and renamed.

config.json also records the run's `fingerprint` (its settings and the content of its inputs): a rerun
continues from the checkpoint only when its own fingerprint is the same, else it starts over.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dvdm import __version__
from dvdm.errors import DvdmError
from dvdm.utils.atomic import atomic_dir

FORMAT = "dvdm-checkpoint"
FORMAT_VERSION = 1
FINGERPRINT_KEY = "fingerprint"
_NOT_INPUT = ("__pycache__",)  # what .dvcignore leaves out of a stage's dependencies (with *.pyc)


@dataclass
class Checkpoint:
    path: Path
    config: dict[str, Any]
    weight_names: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.config["kind"]

    @property
    def step(self) -> int:
        return int(self.config.get("step", 0))

    def weights(self, name: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        f = self.path / f"{name}.safetensors"
        if not f.is_file():
            raise DvdmError(f"{self.path}: checkpoint has no {name} weights")
        try:
            return load_file(str(f), device=str(device))
        except Exception as exc:  # safetensors raises its own error types
            raise DvdmError(f"{f}: unreadable weights ({exc})") from None

    def trainer_state(self) -> dict[str, Any] | None:
        f = self.path / "trainer_state.pt"
        if not f.is_file():
            return None
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DvdmError(f"{f}: unreadable trainer state ({exc})") from None


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_checkpoint(path: str | os.PathLike[str], *, kind: str, config: dict[str, Any],
                    weights: dict[str, dict[str, torch.Tensor]], trainer_state: dict[str, Any] | None = None,
                    step: int = 0) -> Path:
    path = Path(path)
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "dvdm_version": __version__,
            "torch_version": torch.__version__, "step": step, **config}
    with atomic_dir(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(full, indent=2) + "\n")
        for name, sd in weights.items():
            save_file(_contiguous(sd), str(tmp / f"{name}.safetensors"), metadata={"format": FORMAT})
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
    return path


def load_checkpoint(path: str | os.PathLike[str], kind: str | None = None) -> Checkpoint:
    """Open a checkpoint directory, refusing anything that is not one (with the reason)."""
    path = Path(path)
    if not path.exists():
        raise DvdmError(f"{path}: no such checkpoint")
    if not path.is_dir():
        raise DvdmError(f"{path}: not a dvdm checkpoint (expected a directory with config.json and "
                        f"*.safetensors, got a file)")
    cfg_file = path / "config.json"
    try:
        config = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise DvdmError(f"{path}: not a dvdm checkpoint (no config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DvdmError(f"{cfg_file}: not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise DvdmError(f"{path}: not a dvdm checkpoint (config.json lacks format={FORMAT!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise DvdmError(f"{path}: written by a newer dvdm (format {config['format_version']}); upgrade dvdm")
    if kind is not None and config.get("kind") != kind:
        raise DvdmError(f"{path}: is a {config.get('kind')} checkpoint, expected {kind}")
    names = sorted(p.name[: -len(".safetensors")] for p in path.glob("*.safetensors"))
    return Checkpoint(path, config, names)


def run_fingerprint(settings: Mapping[str, Any], inputs: Iterable[str | os.PathLike[str]]) -> str:
    """sha256 over a run's settings (canonical JSON) and the content of its inputs (every file under each input
    path, by relative name): what a checkpoint must share with a run that resumes from it."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for root in sorted({Path(p) for p in inputs}, key=str):
        digest.update(f"\0input {root.as_posix()}\0".encode())
        if not root.exists():
            digest.update(b"missing")
            continue
        files = [root] if root.is_file() else sorted(
            f for f in root.rglob("*")
            if f.is_file() and f.suffix != ".pyc" and not any(part in _NOT_INPUT for part in f.parts))
        for f in files:
            digest.update(f"\0{f.relative_to(root).as_posix() if f != root else ''}\0".encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def resume_point(path: str | os.PathLike[str], fingerprint: str) -> tuple[int | None, str]:
    """(the step to continue from, or None when the run must start over; why). A checkpoint is resumable only
    when it has its trainer state and was written by a run with the same `fingerprint`."""
    path = Path(path)
    if not (path / "config.json").is_file():
        return None, f"no checkpoint at {path}"
    try:
        ckpt = load_checkpoint(path)
    except DvdmError as exc:
        return None, f"the checkpoint is unreadable ({exc})"
    recorded = ckpt.config.get(FINGERPRINT_KEY)
    if recorded is None:
        return None, f"the checkpoint at {path} (step {ckpt.step}) records no settings/inputs fingerprint"
    if recorded != fingerprint:
        return None, (f"the settings or inputs changed since the checkpoint at {path} (step {ckpt.step}) was "
                      f"written")
    if not (path / "trainer_state.pt").is_file():
        return None, f"the checkpoint at {path} has no trainer state"
    return ckpt.step, f"the checkpoint at {path} matches this run's settings and inputs"
