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
"""

from __future__ import annotations

import json
import os
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
