"""The torch modules that become ONNX graphs, and the exporter call (opset >= 17, dynamic batch).

Where the graphs are cut (STYLE.md synthesis 13: export the single-step denoiser, not the loop):

- `image_encoder`: first frame (B, 3, H, W) in [-1, 1] -> features (B, F, gh, gw) on the target grid. Run
  once per request, not once per denoising step (`UNet3D.encode_image`).
- `denoiser`: (x_t, t, image_features[, text]) -> the network output (eps, v or x0, as the manifest says).
  No `drop_text` input: the caller passes the learned null-text embedding (exported in the manifest) as
  `text` for the unconditional branch, which is exactly what the network does with `drop_text`.
- `text_encoder`: (input_ids, attention_mask) -> L2-normalised mean-pooled MiniLM embedding (B, 384);
  dynamic batch and token axes.
- `residual_decoder` (codec spaces): latents (N, k, gh, gw) -> residuals (N, 3, H, W) in pixel units.

The TorchScript exporter (`dynamo=False`) is used: it handles the UNet (SDPA, GroupNorm, static-shape
branches) and BERT at opset 17 with a dynamic batch, in seconds (see tests/test_models.py); parity is
checked on every export anyway (parity.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

MIN_OPSET = 17
BATCH = "batch"


class DenoiserGraph(nn.Module):
    def __init__(self, unet: nn.Module, with_text: bool) -> None:
        super().__init__()
        self.unet = unet
        self.with_text = with_text

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, image_features: torch.Tensor,
                text: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x_t, t, text=text if self.with_text else None, image_features=image_features)


class ImageEncoderGraph(nn.Module):
    def __init__(self, unet: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        self.unet = unet
        self.grid = (int(grid[0]), int(grid[1]))

    def forward(self, first_frame: torch.Tensor) -> torch.Tensor:
        return self.unet.encode_image(first_frame, self.grid)


class ResidualDecoderGraph(nn.Module):
    def __init__(self, autoencoder: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.size = (int(size[0]), int(size[1]))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latent, self.size)


def io_spec(tensors: dict[str, torch.Tensor], dynamic: dict[str, dict[int, str]]) -> dict[str, dict[str, Any]]:
    """{name: {"shape": [...with axis names for dynamic axes], "dtype": "float32"}} for the manifest."""
    out = {}
    for name, x in tensors.items():
        shape: list[Any] = list(x.shape)
        for axis, axis_name in dynamic.get(name, {}).items():
            shape[axis] = axis_name
        out[name] = {"shape": shape, "dtype": str(x.dtype).replace("torch.", "")}
    return out


def export_graph(module: nn.Module, inputs: dict[str, torch.Tensor], output_names: list[str], path: Path,
                 opset: int, dynamic: dict[str, dict[int, str]]) -> dict[str, Any]:
    """Export `module(**inputs)` (inputs in call order) to `path`; check the model; return its IO spec."""
    module.eval()
    names = list(inputs)
    with torch.no_grad():
        outputs = module(*inputs.values())
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on static shape arithmetic, exporter deprecation notes
        torch.onnx.export(module, tuple(inputs.values()), str(path), dynamo=False, opset_version=opset,
                          input_names=names, output_names=output_names, dynamic_axes=dynamic,
                          do_constant_folding=True)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions or versions[0] < MIN_OPSET:
        raise RuntimeError(f"{path.name}: exported with opset {versions}, expected >= {MIN_OPSET}")
    return {"file": path.name,
            "inputs": io_spec(inputs, dynamic),
            "outputs": io_spec(dict(zip(output_names, outputs)), dynamic)}
