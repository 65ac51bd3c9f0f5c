"""The denoiser: a factorised space-time ("(2+1)D") 3D UNet, shared by every target space.

    eps = UNet3D(config)(x_t, t, first_frame, text=None, drop_text=None)

x_t is (B, C_in, T, h, w) on the target space's grid: the full-resolution frames for `rgb`/`diff`, the
block grid for `mvres`. The network never learns which space it serves; the config gives the channels
and the grid comes from x_t (DESIGN.md section 1).

Conditioning:
- time: sinusoidal embedding + MLP; the ResBlocks apply it as a scale/shift after their second GroupNorm.
- text: a frozen sentence embedding (B, text_dim), optionally ZCA-whitened with statistics of the training
  captions (`text_whitening`), through an MLP, added to the time embedding (as LFDM and
  video-diffusion-pytorch do with BERT). A learned `null_text` vector stands in for dropped text
  (classifier-free guidance). `drop_text` (B,) bool or float (> 0.5 = drop) chooses per sample; in training
  with `drop_text=None` each sample is dropped with probability `cond_drop_prob`; in eval mode never.
  `text=None` means "no text" for every sample (the null embedding), i.e. the unconditional branch.
- first frame: `FirstFrameEncoder` features on the grid, repeated over T and concatenated on channels with
  x_t before the first conv (PAPER 1.3). For sampling, `encode_image` once and pass `image_features=`.

Layout (improved-diffusion style): conv_in -> per level [ResBlock3D (+ spatial attn) (+ temporal attn)] x
num_res_blocks, then a stride-(1,2,2) downsample -> middle (res, spatial attn, temporal attn, res) ->
per level [concat skip, ResBlock3D, attn] x (num_res_blocks + 1), nearest upsample + conv -> GroupNorm,
SiLU, zero-initialised conv_out. Nothing depends on T, so any clip length T >= 1 works.

ONNX: no Python branch reads tensor values (only static shapes and flags), attention is
`F.scaled_dot_product_attention`, GroupNorm group counts divide every width (gcd(32, C)), so the legacy
exporter (`dynamo=False`, opset 17) works with a dynamic batch; `drop_text` may be a bool or float input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dvdm.models.config import ModelConfigError, UNetConfig
from dvdm.models.conv import Conv3d
from dvdm.models.image_encoder import FirstFrameEncoder, group_norm


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) int or float positions -> (N, dim) float32 [cos | sin] features (improved-diffusion layout)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device,
                                                           dtype=torch.float32) / half)
    args = positions.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters, so the residual branch it ends starts as a no-op."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _conv_spatial(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    return Conv3d(in_channels, out_channels, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1))


class ResBlock3D(nn.Module):
    """(2+1)D residual block: two spatial (1,3,3) convs with time/text scale-shift, then a zero-initialised
    temporal (3,1,1) conv on its own residual branch (so at init the block treats frames independently)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = _conv_spatial(in_channels, out_channels)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv_spatial(out_channels, out_channels)
        self.norm_t = group_norm(out_channels)
        self.conv_t = zero_module(Conv3d(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0)))
        self.skip = Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(F.silu(emb))[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        h = h + self.conv_t(F.silu(self.norm_t(h)))
        return self.skip(x) + h


class _SelfAttention(nn.Module):
    """Multi-head self-attention on (N, L, C) tokens with a zero-initialised output projection."""

    def __init__(self, channels: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm = group_norm(channels)
        self.qkv = nn.Linear(channels, 3 * heads * head_dim)
        self.out = zero_module(nn.Linear(heads * head_dim, channels))

    def attend(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        qkv = self.qkv(tokens).reshape(-1, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, head_dim)
        return self.out(out.transpose(1, 2).reshape(-1, length, self.heads * self.head_dim))


class SpatialAttention(_SelfAttention):
    """Attention among the h*w positions of each frame: tokens (B*T, h*w, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(-1, h * w, c)
        out = self.attend(tokens).reshape(-1, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x + out


class TemporalAttention(_SelfAttention):
    """Attention among the T frames at each position: tokens (B*h*w, T, C). A fixed sinusoidal encoding of
    the frame index is added to the normalised tokens, so attention knows frame order for any T."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, c, t, h, w = x.shape
        tokens = self.norm(x).permute(0, 3, 4, 2, 1).reshape(-1, t, c)
        frame_pos = sinusoidal_embedding(torch.arange(t, device=x.device), c).to(tokens.dtype)
        out = self.attend(tokens + frame_pos[None])
        return x + out.reshape(-1, h, w, t, c).permute(0, 4, 3, 1, 2)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv_spatial(channels, channels, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv_spatial(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest"))


class _Stage(nn.Module):
    """ResBlock3D followed by optional spatial and temporal attention."""

    def __init__(self, in_channels: int, out_channels: int, cfg: UNetConfig, spatial: bool) -> None:
        super().__init__()
        self.res = ResBlock3D(in_channels, out_channels, cfg.time_embed_dim, cfg.dropout)
        heads, dim = cfg.attention_heads, cfg.attention_head_dim
        self.spatial = SpatialAttention(out_channels, heads, dim) if spatial else None
        self.temporal = TemporalAttention(out_channels, heads, dim) if cfg.temporal_attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.res(x, emb)
        if self.spatial is not None:
            x = self.spatial(x)
        if self.temporal is not None:
            x = self.temporal(x)
        return x


class UNet3D(nn.Module):
    """eps_theta(x_t, t, tau(v0), text): see the module docstring."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        base, emb_dim = cfg.base_channels, cfg.time_embed_dim

        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.text_dim > 0:
            self.text_mlp = nn.Sequential(nn.Linear(cfg.text_dim, emb_dim), nn.SiLU(),
                                          nn.Linear(emb_dim, emb_dim))
            # unit norm like the (L2-normalised) sentence embeddings it stands in for
            null = torch.randn(cfg.text_dim)
            self.null_text = nn.Parameter(null / null.norm())
            if cfg.text_whitening:  # identity until fit_text_whitening; saved with the weights
                self.register_buffer("text_mean", torch.zeros(cfg.text_dim))
                self.register_buffer("text_whiten", torch.eye(cfg.text_dim))
        else:
            self.text_mlp = None
            self.register_parameter("null_text", None)

        self.image_encoder = FirstFrameEncoder(cfg.image_channels, cfg.image_feature_channels,
                                               cfg.image_encoder_base, cfg.image_encoder_blocks)
        self.conv_in = _conv_spatial(cfg.in_channels + cfg.image_feature_channels, base)

        widths = [base * m for m in cfg.channel_mults]
        skip_channels = [base]
        ch = base
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, width in enumerate(widths):
            stages = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                stages.append(_Stage(ch, width, cfg, cfg.spatial_attention[level]))
                ch = width
                skip_channels.append(ch)
            self.down.append(stages)
            if level < len(widths) - 1:
                self.downsample.append(Downsample(ch))
                skip_channels.append(ch)

        heads, dim = cfg.attention_heads, cfg.attention_head_dim
        self.mid_res1 = ResBlock3D(ch, ch, emb_dim, cfg.dropout)
        self.mid_spatial = SpatialAttention(ch, heads, dim)
        self.mid_temporal = TemporalAttention(ch, heads, dim) if cfg.temporal_attention else None
        self.mid_res2 = ResBlock3D(ch, ch, emb_dim, cfg.dropout)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            stages = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stages.append(_Stage(ch + skip_channels.pop(), widths[level], cfg, cfg.spatial_attention[level]))
                ch = widths[level]
            self.up.append(stages)
            if level > 0:
                self.upsample.append(Upsample(ch))
        assert not skip_channels

        self.norm_out = group_norm(ch)
        self.conv_out = zero_module(_conv_spatial(ch, cfg.out_channels))

    # ------------------------------------------------------------------ conditioning
    def check_grid(self, grid: tuple[int, int]) -> None:
        """Raise ModelConfigError unless the UNet can halve this (h, w) grid between all of its levels."""
        m = self.config.grid_multiple
        h, w = int(grid[0]), int(grid[1])
        if h % m or w % m or h < m or w < m:
            raise ModelConfigError(
                f"grid {h}x{w} does not fit this UNet: with {self.config.num_levels} levels "
                f"(channel_mults={list(self.config.channel_mults)}) the grid is halved "
                f"{self.config.num_levels - 1} time(s), so height and width must be multiples of {m}; "
                f"change the clip size / block size or use fewer levels")

    def encode_image(self, first_frame: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """First-frame features (B, image_feature_channels, gh, gw); compute once per sampling run."""
        if first_frame.dim() != 4 or first_frame.shape[1] != self.config.image_channels:
            raise ValueError(f"first_frame must be (B, {self.config.image_channels}, H, W), "
                             f"got {tuple(first_frame.shape)}")
        return self.image_encoder(first_frame.to(self.conv_in.weight.dtype), grid)

    @torch.no_grad()
    def fit_text_whitening(self, embeddings: torch.Tensor, eps: float = 1e-3) -> dict[str, float]:
        """Fit the ZCA whitening of the text path on the training captions' embeddings (N, text_dim).

        Eigen-directions are scaled by 1 / sqrt(lambda + eps * lambda_max): directions with real variance
        come out at unit variance, numerical noise stays small. The learned null embedding stays a raw
        embedding (serving passes it as `text` for the unconditional branch) and starts at the mean caption.
        Returns a summary (rank, explained variance).
        """
        if not self.config.text_whitening:
            raise ValueError("this UNet was built with text_whitening=false")
        x = embeddings.detach().to(torch.float64).cpu()
        if x.dim() != 2 or x.shape[1] != self.config.text_dim or x.shape[0] < 2:
            raise ValueError(f"need (N >= 2, {self.config.text_dim}) embeddings, got {tuple(x.shape)}")
        mean = x.mean(0)
        cov = torch.cov((x - mean).T)
        lam, vec = torch.linalg.eigh(cov)
        lam = lam.clamp(min=0)
        scale = 1.0 / torch.sqrt(lam + eps * lam.max())
        self.text_mean.copy_(mean.to(self.text_mean))
        self.text_whiten.copy_((vec * scale) @ vec.T)
        self.null_text.copy_(mean.to(self.null_text))
        return {"rank": int((lam > eps * lam.max()).sum()), "top_eigenvalue": float(lam.max()),
                "total_variance": float(lam.sum())}

    def text_embedding(self, text: torch.Tensor | None, drop_text: torch.Tensor | None,
                       batch: int) -> torch.Tensor | None:
        """The text contribution to the embedding (B, emb_dim), or None without a text path."""
        if self.text_mlp is None:
            if text is not None:
                raise ValueError("this UNet has no text path (text_dim=0) but a text embedding was passed")
            return None
        null = self.null_text[None].expand(batch, -1)
        if text is None:
            cond = null
        else:
            if text.dim() != 2 or text.shape[1] != self.config.text_dim:
                raise ValueError(f"text must be (B, {self.config.text_dim}), got {tuple(text.shape)}")
            text = text.to(null.dtype)
            if drop_text is None and self.training and self.config.cond_drop_prob > 0:
                drop_text = torch.rand(batch, device=text.device) < self.config.cond_drop_prob
            if drop_text is not None:
                if drop_text.dtype != torch.bool:
                    drop_text = drop_text > 0.5
                cond = torch.where(drop_text.reshape(-1, 1), null, text)
            else:
                cond = text
        if self.config.text_whitening:  # after the null swap: the null text stays a raw embedding (serving)
            cond = (cond - self.text_mean.to(cond.dtype)) @ self.text_whiten.to(cond.dtype)
        return self.text_mlp(cond)

    # ------------------------------------------------------------------ forward
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, first_frame: torch.Tensor | None = None,
                text: torch.Tensor | None = None, drop_text: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the model output (eps, x0 or v: the diffusion object decides) for x_t.

        x_t: (B, in_channels, T, h, w); t: (B,) int64 or float timesteps (a 0-d tensor is broadcast);
        first_frame: (B, image_channels, H, W) in [-1, 1], or pass `image_features` from `encode_image`;
        text: (B, text_dim) or None (= null text for all); drop_text: (B,) bool/float, True/>0.5 = use the
        null text for that sample. Returns (B, out_channels, T, h, w).
        """
        cfg = self.config
        if x_t.dim() != 5 or x_t.shape[1] != cfg.in_channels:
            raise ValueError(f"x_t must be (B, {cfg.in_channels}, T, h, w), got {tuple(x_t.shape)}")
        batch, _, frames, gh, gw = x_t.shape
        self.check_grid((gh, gw))
        dtype = self.conv_in.weight.dtype

        if (first_frame is None) == (image_features is None):
            raise ValueError("pass exactly one of first_frame or image_features")
        if image_features is None:
            image_features = self.encode_image(first_frame, (gh, gw))
        elif tuple(image_features.shape[1:]) != (cfg.image_feature_channels, gh, gw):
            raise ValueError(f"image_features must be (B, {cfg.image_feature_channels}, {gh}, {gw}), "
                             f"got {tuple(image_features.shape)}")

        if t.dim() == 0:
            t = t.reshape(1).expand(batch)
        emb = self.time_mlp(sinusoidal_embedding(t, cfg.base_channels).to(dtype))
        text_emb = self.text_embedding(text, drop_text, batch)
        if text_emb is not None:
            emb = emb + text_emb

        cond = image_features.to(dtype)[:, :, None].expand(-1, -1, frames, -1, -1)
        h = self.conv_in(torch.cat([x_t.to(dtype), cond], dim=1))

        skips = [h]
        for level, stages in enumerate(self.down):
            for stage in stages:
                h = stage(h, emb)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)

        h = self.mid_res1(h, emb)
        h = self.mid_spatial(h)
        if self.mid_temporal is not None:
            h = self.mid_temporal(h)
        h = self.mid_res2(h, emb)

        for i, stages in enumerate(self.up):
            for stage in stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](h)

        return self.conv_out(F.silu(self.norm_out(h)))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with requires_grad when `trainable_only`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
