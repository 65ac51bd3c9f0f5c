"""First-frame encoder tau(v0): a light ResNet that maps the given frame onto the denoiser's grid.

PAPER section 1.3: the first frame is encoded by bottleneck ResNet blocks (He et al. 2016), trained jointly
with the denoiser, and its features are concatenated on channels with the noisy target. One encoder serves
every target space, so the output grid is a call argument: the full-resolution grid for `rgb`/`diff`
(e.g. 64x64) or the block grid for `mvres` (e.g. 8x8 from a 128x128 frame).

Downsampling plan (a pure function of static shapes, so it traces and exports to ONNX): the stem and each
bottleneck block use stride 2 while the feature map is still more than twice the grid on both sides,
stride 1 otherwise; the rest is average pooling (or bilinear resizing when the grid is larger). The same
weights therefore run at stride 1 or 2, and every parameter is used for every grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm whose group count divides the channels (gcd(32, C)), so odd widths export to ONNX."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


class Bottleneck(nn.Module):
    """Pre-activation bottleneck block: 1x1 reduce, 3x3 (stride 1 or 2), 1x1 expand, projection skip."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = max(out_channels // 4, 8)
        self.norm1 = group_norm(in_channels)
        self.reduce = nn.Conv2d(in_channels, mid, 1)
        self.norm2 = group_norm(mid)
        self.conv = nn.Conv2d(mid, mid, 3, padding=1)
        self.norm3 = group_norm(mid)
        self.expand = nn.Conv2d(mid, out_channels, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
        h = self.reduce(F.silu(self.norm1(x)))
        h = F.conv2d(F.silu(self.norm2(h)), self.conv.weight, self.conv.bias, stride=stride, padding=1)
        h = self.expand(F.silu(self.norm3(h)))
        if self.skip is not None:
            # ResNet "B" projection: a strided 1x1 conv gives ceil(H/2) like the 3x3 path, also for odd H
            skip = F.conv2d(x, self.skip.weight, self.skip.bias, stride=stride)
        else:
            skip = x[:, :, ::stride, ::stride] if stride > 1 else x
        return skip + h


class FirstFrameEncoder(nn.Module):
    """Encode the first frame (B, in_channels, H, W) in [-1, 1] to (B, out_channels, gh, gw).

    Stem conv 3x3 -> `num_blocks` bottleneck blocks (width doubles per block, capped at 8x base) ->
    GroupNorm + SiLU -> pool/resize to the grid -> 1x1 conv to `out_channels`.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 32, base_channels: int = 32,
                 num_blocks: int = 2) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        widths = [base_channels] + [base_channels * 2 ** min(i + 1, 3) for i in range(num_blocks)]
        self.blocks = nn.ModuleList(Bottleneck(widths[i], widths[i + 1]) for i in range(num_blocks))
        self.norm_out = group_norm(widths[-1])
        self.proj = nn.Conv2d(widths[-1], out_channels, 1)

    def plan(self, image_hw: tuple[int, int], grid: tuple[int, int]) -> list[int]:
        """Strides of the stem and of each block for this image size and grid (static shapes only)."""
        h, w = image_hw
        gh, gw = grid
        strides = []
        for _ in range(1 + len(self.blocks)):
            if h > 2 * gh and w > 2 * gw:
                strides.append(2)
                h, w = (h + 1) // 2, (w + 1) // 2
            else:
                strides.append(1)
        return strides

    def forward(self, image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"first frame must be (B, {self.in_channels}, H, W), got {tuple(image.shape)}")
        gh, gw = int(grid[0]), int(grid[1])
        strides = self.plan((int(image.shape[2]), int(image.shape[3])), (gh, gw))
        x = F.conv2d(image, self.stem.weight, self.stem.bias, stride=strides[0], padding=1)
        for block, stride in zip(self.blocks, strides[1:]):
            x = block(x, stride)
        x = F.silu(self.norm_out(x))
        x = resize_to_grid(x, (gh, gw))
        return self.proj(x)


def resize_to_grid(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Average-pool (B, C, h, w) down to `grid`, or resize it bilinearly when the grid is larger.

    Integer ratios use a plain `avg_pool2d` (identical to adaptive pooling, and it exports to ONNX);
    other ratios fall back to `adaptive_avg_pool2d`, which the ONNX exporters reject.
    """
    h, w = int(x.shape[2]), int(x.shape[3])
    gh, gw = grid
    if (h, w) == (gh, gw):
        return x
    if h >= gh and w >= gw:
        if h % gh == 0 and w % gw == 0:
            return F.avg_pool2d(x, kernel_size=(h // gh, w // gw))
        return F.adaptive_avg_pool2d(x, (gh, gw))
    return F.interpolate(x, size=(gh, gw), mode="bilinear", align_corners=False)
