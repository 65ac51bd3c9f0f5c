"""SSIM (Wang et al. 2004): one differentiable implementation, for the reported metric and for losses.

Two conventions, which differ only in the border (`convention=`):

- "valid" (`PUBLISHED`, the reported SSIM): the SSIM map only where the whole window lies inside the
  frame, i.e. the frame less a border of (window - 1) / 2 = 5 pixels on each side, then its mean. This is
  the published protocol: Wang et al.'s reference code, scikit-image's
  `structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=..., channel_axis=-1)` and TensorFlow's `tf.image.ssim` (VALID convolution), which the video
  prediction papers (and the BAIR / SSIM tables this project compares with) report.
- "padded" (`PADDED`): each channel reflect-padded by 5 pixels so the SSIM map has the frame's size, then
  the mean over the whole map. That is torchmetrics' `structural_similarity_index_measure` with its
  defaults (bit for bit up to float32 rounding, ~1e-6), what dvdm reported before issue 13. Its border
  windows see mirrored content; on 64x64 BAIR frames it read ~0.045 above the published number in issue
  13's check (the gap depends on the content: 0.006-0.03 between neighbouring real BAIR frames).

Both use, per frame, a Gaussian window of 11 taps with sigma 1.5, k1 = 0.01, k2 = 0.03, the population
(biased) local variances and covariance, each channel on its own, then the mean over the channels.

The reported SSIM (`ssim_per_frame`, what evaluate, train-ae and the benchmarks print) takes uint8 RGB
scaled to float32 in [0, 1] (data range 1) and defaults to "valid"; a clip's value is the mean over its
frames. `ssim()` defaults to "valid" too; the residual autoencoder's `1 - SSIM` loss term passes "padded",
the convention it was trained with (a loss is not a reported number, and the padded map lets border pixels
count like the others).

torchmetrics derives its Gaussian window from sigma (`2 * int(3.5 * sigma + 0.5) + 1`: 11 for sigma 1.5,
7 for sigma 0.8) and ignores `kernel_size`; scikit-image does the same (`truncate=3.5`); here the window
size is explicit, and they agree whenever they are the same size.

Small images: the window shrinks to the largest odd size that fits the smaller side (sigma shrinks in
proportion), so "padded" can reflect-pad (`pad < side`) and "valid" keeps at least one window position.
scikit-image and TensorFlow refuse images smaller than the window instead; the reported frames (64 px and
up) never need it. Images narrower than 2 pixels have no structure to compare and raise ValueError.

Computed in at least float32 (half/bfloat16 inputs under autocast are promoted), on the inputs' device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dvdm.metrics.psnr import check_frames

K1 = 0.01
K2 = 0.03
WINDOW = 11
SIGMA = 1.5
PUBLISHED = "valid"
PADDED = "padded"
CONVENTIONS = (PUBLISHED, PADDED)
REPORTED_CONVENTION = PUBLISHED


def gaussian_window(window_size: int, sigma: float, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Normalised 1D Gaussian of `window_size` taps (odd), as torchmetrics, scikit-image and TF build it."""
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
         reduction: str = "mean", k1: float = K1, k2: float = K2, *, convention: str = PUBLISHED) -> torch.Tensor:
    """SSIM between two (N, C, H, W) batches (each channel on its own, then averaged).

    data_range: the dynamic range of the values (e.g. 1.0 for images in [0, 1], 255 for uint8 pixels);
    it sets the stabilising constants c1 = (k1 * L)^2 and c2 = (k2 * L)^2.
    reduction: "mean" gives a scalar over the batch, "none" one value per image (N,).
    convention: "valid" (the published protocol, the default, what `ssim_per_frame` reports) or "padded"
    (the autoencoder loss's, which passes it explicitly); see the module doc.
    Differentiable in both arguments.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim expects two (N, C, H, W) tensors of the same shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, y = x.to(dtype), y.to(dtype)
    n, c, h, w = x.shape
    window_size, sigma = fit_window(h, w, window_size, sigma)
    g = gaussian_window(window_size, sigma, dtype=dtype, device=x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window_size, window_size).contiguous()
    pad = (window_size - 1) // 2
    if pad and convention == PADDED:
        x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        y = F.pad(y, (pad, pad, pad, pad), mode="reflect")
    # without padding the convolution is "valid": one value per window that lies inside the image
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


def ssim_per_frame(pred: np.ndarray, target: np.ndarray, *, convention: str = REPORTED_CONVENTION) -> np.ndarray:
    """The reported SSIM of each frame pair of two uint8 (T, H, W, 3) clips (see the module doc); (T,) float64.

    `convention="valid"` (default) is the published protocol (scikit-image / tf.image.ssim);
    `convention="padded"` gives the torchmetrics-style numbers dvdm reported before issue 13.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    check_frames(pred, target)

    def unit(frames: np.ndarray) -> torch.Tensor:
        # float32: float64 convolutions are ~10x slower on CPU for a difference of ~1e-6
        return torch.from_numpy(frames).permute(0, 3, 1, 2).to(torch.float32) / 255.0

    with torch.no_grad():
        return ssim(unit(pred), unit(target), data_range=1.0, reduction="none",
                    convention=convention).double().numpy()


def ssim_protocol(convention: str = REPORTED_CONVENTION) -> dict[str, Any]:
    """What a reported SSIM value means, recorded beside it (evaluate's metrics.json `ssim_protocol`)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    region = {PUBLISHED: f"valid: windows inside the frame only (a {(WINDOW - 1) // 2}-pixel border excluded)",
              PADDED: f"padded: reflect padding of {(WINDOW - 1) // 2} pixels, the map has the frame's size"}
    same_as = {PUBLISHED: "skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, "
                          "use_sample_covariance=False, data_range=1.0, channel_axis=-1); tf.image.ssim",
               PADDED: "torchmetrics structural_similarity_index_measure (defaults, data_range=1.0)"}
    return {"metric": "SSIM", "convention": convention, "region": region[convention],
            "same_as": same_as[convention], "window": f"Gaussian, {WINDOW} taps, sigma {SIGMA}",
            "k1": K1, "k2": K2, "data_range": 1.0, "input": "uint8 RGB scaled to [0, 1], float32",
            "aggregation": "mean over the map and the 3 channels per frame; a clip's value is the mean over "
                           "its frames, a set's the mean over clips"}
