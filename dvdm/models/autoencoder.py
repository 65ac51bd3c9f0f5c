"""ED-VDM's residual autoencoder: compresses motion-compensation residuals onto the motion-vector grid.

A residual frame r (the frame minus its motion-compensated prediction, int16 in [-255, 255]) is encoded
per frame by a 2D conv net whose total downsampling equals the codec's block size, so its latent
(`latent_channels`, default 5) sits on the same (ceil(H/b), ceil(W/b)) grid as the 2-channel motion
vectors and the two are concatenated on channels for diffusion (2 + 5 = 7 values per 16x16 block, the
paper's ~110x). Training: L1 on the scaled residuals (the paper's loss) + `mse_weight * MSE` +
`ssim_weight * (1 - SSIM)` (+ `kl_weight * KL` when `kl`, the LDM "KL-f16" recipe).

Why an MSE term (not in the paper): residuals are mostly exact zeros with rare large values (object
edges, disocclusions). L1's optimum under uncertainty is the median, i.e. 0 for such data, so an
L1-only AE first collapses to "predict no residual" and learns the rare large values very slowly.
Measured (block 8, base 16, 300 Adam steps, lr 2e-3, residual_scale 32): on the 60 full residual frames
of 4 textured synthetic 64x64 clips L1 + SSIM gained +0.16 dB over the all-zero residual, L1 + MSE + SSIM
+2.0 dB, MSE alone +2.5 dB; on the 16 highest-energy 32x32 crops +2.6 dB vs +8.0 dB; on real (Kinetics)
residuals +0.5 vs +1.8 dB; and in the residual_scale sweep below, dropping the MSE term cost 0.4-4.6 dB at
every scale. In the scaled space an error of `residual_scale` pixels costs the same under both terms:
below it L1 dominates (sharp, sparse reconstructions), above it MSE does (large misses, which dominate the
PSNR, are not ignored). `mse_weight = 0` gives the paper's loss.

Units. Everything public takes and returns residuals in *pixel units* (what `dvdm.codec` produces); the
network sees `r / residual_scale`. Residuals are sparse and heavy-tailed; measured std of the raw
residuals (block 16 at 128x128, block 8 at 64x64, SAD search +-block): synthetic moving shapes 4-6;
real clips at native frame rate (kinetics/demo.mp4, captioned/test.mp4, ucf101 test.avi) 5-10; the same
clips at the paper's protocol (16 frames spread over the whole video, i.e. large motion) 13-32; the
high-energy blocks the AE actually has to code 17-22. /255 would make typical residuals ~0.02, far below
the unit scale conv nets are initialised for. `residual_scale = 16` was the best of 8/16/32/64/128 when
fitting 300 steps to 32x32 residual crops (block 8, base 16, lr 2e-3, 3 seeds; dB gained over the all-zero
residual): synthetic 8.4 / 11.6 / 10.2 / 10.4 / 6.3, Kinetics 11.9 / 13.1 / 11.4 / 9.8 / 7.2. It is
also where the L1 and MSE terms cross over (below): errors beyond 16 pixels are penalised quadratically.
The decoder's output conv is zero-initialised, so the net starts from the all-zero residual (motion
compensation alone), which for sparse residuals is already a strong baseline.

Architecture (LDM-style, no attention): conv_in; per stage i (one per factor of 2 of `block`):
`num_res_blocks` ResNet blocks (GroupNorm(gcd(32, C)) + SiLU + 3x3 conv, twice, 1x1 skip when the width
changes) at `base_channels * channel_mults[i]` channels, then a stride-2 3x3 conv; a middle ResNet block;
GroupNorm + SiLU + 3x3 conv to the latent (2x channels: mean and log-variance when `kl`). The decoder
mirrors it with nearest-neighbour 2x upsampling + 3x3 conv. Frames whose sides are not multiples of the
block are replicate-padded to the grid before encoding and cropped after decoding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dvdm.errors import ConfigError
from dvdm.metrics.psnr import PEAK
from dvdm.metrics.ssim import PADDED, ssim


class AutoencoderConfigError(ConfigError, ValueError):
    """An invalid autoencoder setting (a ConfigError for the CLI, a ValueError for Python callers)."""


def default_channel_mults(block: int) -> tuple[int, ...]:
    """One multiplier per stride-2 stage (log2(block) of them): 1, 2, 4, then 4 for every further stage,
    as LDM's f=16 autoencoder ((1, 2, 4, 4) for block 16, (1, 2, 4) for 8, (1, 2) for 4, (1,) for 2).
    Width is capped at 4x base (LDM's choice too) so the deepest stages, which run on few pixels next to a
    5-channel bottleneck, do not dominate the parameter count (untested against wider ones)."""
    return tuple(min(2 ** i, 4) for i in range(int(math.log2(block))))


@dataclass
class AutoencoderConfig:
    """Settings of `ResidualAutoencoder` (JSON-serialisable through `to_dict`/`from_dict`).

    block: downsampling factor = the codec's block size (power of two >= 2).
    latent_channels: latent channels per grid cell. base_channels: width of the first stage.
    channel_mults: width multiplier per stride-2 stage, len == log2(block); None = `default_channel_mults`.
    num_res_blocks: ResNet blocks per stage. kl: a Gaussian posterior with a KL term (LDM's KL-AE);
    `encode` then returns its mean. kl_weight: weight of the KL term (normalised per residual element, so it
    means what LDM's weight means against a per-pixel reconstruction loss). ssim_weight: weight of
    (1 - SSIM). mse_weight: weight of the MSE of the scaled residuals (see the module doc; 0 = the paper's
    L1-only loss). residual_scale: the network sees residual / residual_scale (see the module doc).
    out_clip: if set, decoded residuals are clamped to [-out_clip, out_clip] pixels (e.g. 255).
    """

    block: int = 16
    latent_channels: int = 5
    base_channels: int = 32
    channel_mults: tuple[int, ...] | None = None
    num_res_blocks: int = 1
    kl: bool = False
    kl_weight: float = 1e-6
    ssim_weight: float = 0.2
    mse_weight: float = 1.0
    residual_scale: float = 16.0
    out_clip: float | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> AutoencoderConfigError:
            return AutoencoderConfigError(f"autoencoder: {msg}")

        for key in ("block", "latent_channels", "base_channels", "num_res_blocks"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(f"{key} must be an integer, got {value!r}")
        if self.block < 2 or self.block & (self.block - 1):
            raise bad(f"block must be a power of two >= 2, got {self.block}")
        if self.latent_channels < 1 or self.base_channels < 1:
            raise bad(f"latent_channels and base_channels must be >= 1, got {self.latent_channels}, "
                      f"{self.base_channels}")
        if self.num_res_blocks < 0:
            raise bad(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")
        stages = int(math.log2(self.block))
        if self.channel_mults is None:
            self.channel_mults = default_channel_mults(self.block)
        if isinstance(self.channel_mults, (str, bytes)) or not isinstance(self.channel_mults, Sequence):
            raise bad(f"channel_mults must be a list of integers, got {self.channel_mults!r}")
        mults = tuple(self.channel_mults)
        if len(mults) != stages or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mults):
            raise bad(f"channel_mults must be {stages} positive integers (one per stride-2 stage of block "
                      f"{self.block}), got {list(mults)}")
        self.channel_mults = mults
        if not isinstance(self.kl, bool):
            raise bad(f"kl must be true/false, got {self.kl!r}")
        for key in ("kl_weight", "ssim_weight", "mse_weight", "residual_scale"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(f"{key} must be a number, got {value!r}")
            setattr(self, key, float(value))
        if min(self.kl_weight, self.ssim_weight, self.mse_weight) < 0:
            raise bad(f"kl_weight, ssim_weight and mse_weight must be >= 0, got {self.kl_weight}, "
                      f"{self.ssim_weight}, {self.mse_weight}")
        if self.residual_scale <= 0:
            raise bad(f"residual_scale must be > 0, got {self.residual_scale}")
        if self.out_clip is not None:
            if isinstance(self.out_clip, bool) or not isinstance(self.out_clip, (int, float)) \
                    or not self.out_clip > 0:
                raise bad(f"out_clip must be a positive number or null, got {self.out_clip!r}")
            self.out_clip = float(self.out_clip)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mults"] = list(self.channel_mults or ())
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AutoencoderConfig:
        """Inverse of `to_dict`; unknown keys are an error (a typo must never train the wrong model)."""
        data = dict(data or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise AutoencoderConfigError(f"autoencoder: unknown setting(s) {', '.join(unknown)}; "
                                         f"known: {', '.join(names)}")
        if isinstance(data.get("channel_mults"), list):
            data["channel_mults"] = tuple(data["channel_mults"])
        return cls(**data)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig, out_channels: int):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        self.conv_in = nn.Conv2d(3, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        ch = widths[0]
        for width in widths:
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(ch, width))
                ch = width
            layers.append(Downsample(ch))
        self.down = nn.Sequential(*layers)
        self.mid = ResnetBlock(ch, ch)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        ch = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch, 3, padding=1)
        self.mid = ResnetBlock(ch, ch)
        layers: list[nn.Module] = []
        for width in reversed(widths):
            layers.append(Upsample(ch))
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(ch, width))
                ch = width
        self.up = nn.Sequential(*layers)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, 3, 3, padding=1)
        # start from the all-zero residual (plain motion compensation), not from noise
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class ResidualAutoencoder(nn.Module):
    """Per-frame residual autoencoder; inputs and outputs in pixel units, (N, 3, H, W) float."""

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = config or AutoencoderConfig()
        cfg = self.config
        self.block = cfg.block
        self.latent_channels = cfg.latent_channels
        self.encoder = Encoder(cfg, 2 * cfg.latent_channels if cfg.kl else cfg.latent_channels)
        self.decoder = Decoder(cfg)

    # -- shapes -------------------------------------------------------------------------------------
    def grid(self, height: int, width: int) -> tuple[int, int]:
        """The latent's (motion-vector grid's) spatial size for a height x width frame."""
        return -(-height // self.block), -(-width // self.block)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        return (self.latent_channels, *self.grid(height, width))

    def _check_input(self, r: torch.Tensor) -> None:
        if r.ndim != 4 or r.shape[1] != 3:
            raise ValueError(f"residuals must be (N, 3, H, W), got {tuple(r.shape)}")
        if not r.is_floating_point():
            raise ValueError(f"residuals must be a floating-point tensor (pixel units), got {r.dtype}")

    # -- encode/decode --------------------------------------------------------------------------------
    def posterior(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, log-variance) of the latent; log-variance is None without `kl`."""
        self._check_input(r)
        h, w = r.shape[-2:]
        gh, gw = self.grid(h, w)
        x = r / self.config.residual_scale
        if (gh * self.block, gw * self.block) != (h, w):
            x = F.pad(x, (0, gw * self.block - w, 0, gh * self.block - h), mode="replicate")
        moments = self.encoder(x)
        if not self.config.kl:
            return moments, None
        mean, logvar = moments.chunk(2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def encode(self, r: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) residuals in pixels -> (N, latent_channels, ceil(H/b), ceil(W/b)) (the posterior
        mean when `kl`)."""
        return self.posterior(r)[0]

    def decode(self, z: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Latents -> (N, 3, H, W) residuals in pixels, cropped to `size` = (H, W)."""
        h, w = int(size[0]), int(size[1])
        if z.ndim != 4 or z.shape[1] != self.latent_channels or tuple(z.shape[-2:]) != self.grid(h, w):
            raise ValueError(f"latent {tuple(z.shape)} does not match ({self.latent_channels}, {self.grid(h, w)}) "
                             f"for a {h}x{w} frame with block {self.block}")
        x = self.decoder(z)[..., :h, :w] * self.config.residual_scale
        if self.config.out_clip is not None:
            x = torch.clamp(x, -self.config.out_clip, self.config.out_clip)
        return x

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(r_hat, z, kl_term). With `kl`, z is sampled from the posterior in training mode and is its mean
        in eval mode; kl_term is KL(q(z|r) || N(0, I)) summed over the latent and divided by the residual's
        3*H*W elements, averaged over the batch (0 without `kl`)."""
        mean, logvar = self.posterior(r)
        if logvar is None:
            z, kl_term = mean, mean.new_zeros(())
        else:
            z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if self.training else mean
            kl_sum = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)
            kl_term = (kl_sum / (3 * r.shape[-2] * r.shape[-1])).mean()
        return self.decode(z, (r.shape[-2], r.shape[-1])), z, kl_term

    def loss(self, r: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training loss on a batch of residuals in pixels.

        total = l1 + mse_weight * mse + ssim_weight * (1 - ssim) + kl_weight * kl, where l1 and mse are the
        mean absolute and squared errors of the scaled residuals (pixel error / residual_scale), ssim is
        `dvdm.metrics.ssim` with the reported window (Gaussian, 11 px, sigma 1.5) and
        data_range = 255 / residual_scale: a frame's range in the scaled space. SSIM is
        scale-equivariant, so this equals the SSIM of the pixel-unit residuals with data_range 255 and
        does not change with residual_scale. Returns 0-d tensors: total (differentiable) and, detached for
        logging, l1, mse, ssim (the similarity, not 1 - SSIM) and kl (0 without `kl`).
        """
        r_hat, _, kl_term = self(r)
        s = self.config.residual_scale
        x, y = r / s, r_hat / s
        err = y - x
        l1 = err.abs().mean()
        mse = err.pow(2).mean()
        # the convention the autoencoder was trained with: the padded map lets border pixels count like the rest
        sim = ssim(y, x, data_range=PEAK / s, convention=PADDED)
        total = l1 + self.config.mse_weight * mse + self.config.ssim_weight * (1.0 - sim)
        if self.config.kl:
            total = total + self.config.kl_weight * kl_term
        return {"total": total, "l1": l1.detach(), "mse": mse.detach(), "ssim": sim.detach(),
                "kl": kl_term.detach()}


# -- numpy side --------------------------------------------------------------------------------------


def _model_device_dtype(model: nn.Module, device: torch.device | str | None) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return (torch.device(device) if device is not None else p.device), p.dtype


def roundtrip_fn(model: ResidualAutoencoder, device: torch.device | str | None = None
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """A `dvdm.codec` residual round trip: (H, W, 3) int16 residual -> (H, W, 3) float32 decoded residual
    (encode + decode under `torch.inference_mode`). Pass it as `decompose(frames, cfg, roundtrip=fn)` to
    run the autoencoder inside the closed codec loop. `device` defaults to the model's; the model is
    expected to already be there and in eval mode (only matters for `kl`: eval uses the posterior mean,
    which `encode` returns anyway)."""
    dev, dtype = _model_device_dtype(model, device)

    def fn(residual: np.ndarray) -> np.ndarray:
        residual = np.asarray(residual)
        if residual.ndim != 3 or residual.shape[-1] != 3:
            raise ValueError(f"roundtrip expects one (H, W, 3) residual frame, got {residual.shape}")
        h, w = residual.shape[:2]
        with torch.inference_mode():
            r = torch.from_numpy(residual.astype(np.float32)).permute(2, 0, 1)[None].to(dev, dtype)
            out = model.decode(model.encode(r), (h, w))
            return out[0].permute(1, 2, 0).float().cpu().numpy()

    return fn
