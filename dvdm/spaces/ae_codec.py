"""The trained residual autoencoder as `mvres`'s residual codec (numpy in, numpy out)."""

from __future__ import annotations

import numpy as np
import torch


class AutoencoderResidualCodec:
    """Wraps a `ResidualAutoencoder`: residual frames (N, H, W, 3) in pixel units <-> latents (N, k, gh, gw).

    Runs under `torch.inference_mode` in eval mode, in float32, batched over frames, channels-last: oneDNN's
    2D convolutions, group norms and upsampling run about 1.45x faster on NHWC than on NCHW frames here
    (`benchmarks/sampling_speed.py`), and the NHWC result is already the (N, H, W, 3) layout numpy wants.
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", batch: int = 64):
        self.model = model.to(device, memory_format=torch.channels_last).eval()
        self.device = torch.device(device)
        self.block = int(model.config.block)
        self.latent_channels = int(model.config.latent_channels)
        self.batch = batch

    def encode(self, residual: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(residual, dtype=np.float32)).permute(0, 3, 1, 2)
        out = []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch):
                chunk = x[i:i + self.batch].to(self.device, memory_format=torch.channels_last)
                out.append(self.model.encode(chunk).float().cpu())
        return torch.cat(out).numpy()

    def decode(self, latent: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        z = torch.from_numpy(np.ascontiguousarray(latent, dtype=np.float32))
        out = []
        with torch.inference_mode():
            for i in range(0, len(z), self.batch):
                chunk = z[i:i + self.batch].to(self.device, memory_format=torch.channels_last)
                out.append(self.model.decode(chunk, size).float().cpu())
        return torch.cat(out).permute(0, 2, 3, 1).numpy()


def autoencoder_codec(config: dict, weights: dict[str, torch.Tensor],
                      device: str | torch.device = "cpu") -> AutoencoderResidualCodec:
    """The codec of a saved autoencoder (its config and state dict, as a denoiser checkpoint keeps them)."""
    from dvdm.models import AutoencoderConfig, ResidualAutoencoder

    model = ResidualAutoencoder(AutoencoderConfig.from_dict(config))
    model.load_state_dict(weights)
    return AutoencoderResidualCodec(model, device)
