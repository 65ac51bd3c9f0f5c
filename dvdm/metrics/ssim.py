"""SSIM (Wang et al. 2004): one differentiable implementation, for the reported metric and for losses.

The reported SSIM (`ssim_per_frame`, what evaluate, train-ae and the benchmarks print) is, per frame:
uint8 RGB scaled to float32 in [0, 1], data range 1, Gaussian window of 11 taps with sigma 1.5, k1 = 0.01,
k2 = 0.03, each channel on its own with reflect padding of 5 pixels so the SSIM map has the frame's size,
then the mean over the map and the three channels. That is torchmetrics' `structural_similarity_index_measure`
with its defaults, bit for bit up to float32 rounding (~1e-6; identical frames give 0.99999..).
Note that torchmetrics derives its Gaussian window from sigma (`2 * int(3.5 * sigma + 0.5) + 1`: 11 for
sigma 1.5, 7 for sigma 0.8) and ignores `kernel_size`; here the window size is explicit, and the two agree
whenever they are the same size.

`ssim` takes the window, sigma and data range as parameters, so a loss can use other values; the residual
autoencoder's loss term uses the defaults (the reported convention), so `1 - ssim` optimises the reported
number.

Small images: reflect padding needs `pad < side`, and a window wider than the image averages mostly
padding, so the window shrinks to the largest odd size that fits the smaller side (sigma shrinks in
proportion). Images narrower than 2 pixels have no structure to compare and raise ValueError.

Computed in at least float32 (half/bfloat16 inputs under autocast are promoted), on the inputs' device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dvdm.metrics.psnr import check_frames

K1 = 0.01
K2 = 0.03
WINDOW = 11
SIGMA = 1.5


def gaussian_window(window_size: int, sigma: float, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1D Gaussian of `window_size` taps (odd), as torchmetrics builds it."""
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd number, got {window_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    dist = torch.arange((1 - window_size) / 2, (1 + window_size) / 2, 1.0, dtype=dtype, device=device)
    g = torch.exp(-((dist / sigma) ** 2) / 2)
    return g / g.sum()


def fit_window(height: int, width: int, window_size: int, sigma: float) -> tuple[int, float]:
    """The (window_size, sigma) actually used for an image of this size (see the module doc)."""
    side = min(height, width)
    if side < 2:
        raise ValueError(f"SSIM needs images of at least 2x2 pixels, got {height}x{width}")
    if window_size <= side:
        return window_size, sigma
    fitted = side if side % 2 == 1 else side - 1
    return fitted, sigma * fitted / window_size


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float, window_size: int = WINDOW, sigma: float = SIGMA,
         reduction: str = "mean", k1: float = K1, k2: float = K2) -> torch.Tensor:
    """SSIM between two (N, C, H, W) batches (each channel on its own, then averaged).

    data_range: the dynamic range of the values (e.g. 1.0 for images in [0, 1], 255 for uint8 pixels);
    it sets the stabilising constants c1 = (k1 * L)^2 and c2 = (k2 * L)^2.
    reduction: "mean" gives a scalar over the batch, "none" one value per image (N,).
    Differentiable in both arguments.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim expects two (N, C, H, W) tensors of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    n, c, h, w = x.shape
    window_size, sigma = fit_window(h, w, window_size, sigma)
    g = gaussian_window(window_size, sigma, dtype=dtype, device=x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window_size, window_size).contiguous()
    pad = (window_size - 1) // 2
    if pad:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    stats = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), kernel, groups=c).split(n)
    mu_x, mu_y = stats[0], stats[1]
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x = torch.clamp(stats[2] - mu_xx, min=0.0)
    var_y = torch.clamp(stats[3] - mu_yy, min=0.0)
    cov = stats[4] - mu_xy
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_xy + c1) * (2 * cov + c2)) / ((mu_xx + mu_yy + c1) * (var_x + var_y + c2))
    per_image = ssim_map.reshape(n, -1).mean(-1)
    return per_image.mean() if reduction == "mean" else per_image


def ssim_per_frame(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The reported SSIM of each frame pair of two uint8 (T, H, W, 3) clips (see the module doc); (T,) float64."""
    pred, target = np.asarray(pred), np.asarray(target)
    check_frames(pred, target)

    def unit(frames: np.ndarray) -> torch.Tensor:
        # float32: float64 convolutions are ~10x slower on CPU for a difference of ~1e-6
        return torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float32) / 255.0

    with torch.no_grad():
        return ssim(unit(pred), unit(target), data_range=1.0, reduction="none").double().numpy()
