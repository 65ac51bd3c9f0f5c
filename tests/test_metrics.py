"""dvdm.metrics: PSNR and SSIM against known values, SSIM parity with torchmetrics (the evaluation's former
implementation, so reported numbers hold), and one SSIM for train-ae and evaluate."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from dvdm.metrics.psnr import PSNR_CAP_DB, mse, psnr, psnr_of_mse, psnr_per_frame
from dvdm.metrics.ssim import K1, ssim, ssim_per_frame


def frames(seed: int, shape=(4, 32, 40, 3)) -> np.ndarray:
    """Smooth uint8 frames (blocky noise, upsampled) with structure for SSIM to measure."""
    rng = np.random.default_rng(seed)
    t, h, w, c = shape
    coarse = rng.integers(0, 256, (t, h // 4 + 1, w // 4 + 1, c), dtype=np.uint8)
    return np.ascontiguousarray(coarse.repeat(4, axis=1).repeat(4, axis=2)[:, :h, :w])


def noisy(clip: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(clip + rng.normal(0, sigma, clip.shape), 0, 255).astype(np.uint8)


# -- PSNR ---------------------------------------------------------------------------------------------


def test_psnr_known_values_and_the_cap():
    r = np.zeros((2, 8, 8, 3), np.int16)
    assert psnr(r, r) == PSNR_CAP_DB == 100.0          # identical: the cap, never inf (JSON stays valid)
    assert psnr(r, r + 255.0) == pytest.approx(0.0)    # an error of the full peak
    assert psnr(np.zeros(4), np.full(4, 2.55)) == pytest.approx(40.0)  # MSE 2.55^2 -> 255^2 / MSE = 1e4
    flat = np.full((3, 8, 8, 3), 100, np.uint8)
    np.testing.assert_allclose(psnr_per_frame(flat + 16, flat), 20 * np.log10(255 / 16), rtol=1e-12)
    assert psnr_of_mse(1e-12) == PSNR_CAP_DB           # a tiny error is capped too
    assert mse(np.array([0, 2]), np.array([1, 0])) == 2.5
    with pytest.raises(ValueError):
        psnr_of_mse(-1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(r, r[:1])


def test_psnr_per_frame_caps_each_frame_and_pooled_psnr_pools_the_mse():
    clip = frames(0)
    other = clip.copy()
    other[1:] = noisy(clip[1:], 8)
    per = psnr_per_frame(other, clip)
    assert per[0] == PSNR_CAP_DB and (per[1:] < 40).all()
    assert psnr(other, clip) == pytest.approx(psnr_of_mse(np.mean(
        [mse(o, c) for o, c in zip(other, clip)])))   # pooled, not a mean of per-frame values
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_per_frame(clip, clip[:2])
    with pytest.raises(ValueError, match="uint8"):
        psnr_per_frame(clip.astype(np.float32), clip)


def test_psnr_matches_torchmetrics_as_evaluate_used_it():
    from torchmetrics.functional.image import peak_signal_noise_ratio

    clip = frames(1)
    other = noisy(clip, 12)
    unit = [torch.from_numpy(x).permute(0, 3, 1, 2).double() / 255 for x in (other, clip)]
    theirs = peak_signal_noise_ratio(*unit, data_range=1.0, reduction="none", dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(psnr_per_frame(other, clip), theirs, rtol=1e-7)  # theirs: float32 inside


def test_the_psnr_module_imports_no_torch():
    code = "import sys, dvdm.metrics.psnr; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- SSIM ---------------------------------------------------------------------------------------------


def test_ssim_of_flat_frames_is_the_luminance_term():
    """Flat frames have no variance or covariance, so SSIM = (2 a b + c1) / (a^2 + b^2 + c1) exactly."""
    a, b = np.full((1, 16, 16, 3), 100, np.uint8), np.full((1, 16, 16, 3), 140, np.uint8)
    x, y, c1 = 100 / 255, 140 / 255, K1 ** 2
    expected = (2 * x * y + c1) / (x * x + y * y + c1)
    np.testing.assert_allclose(ssim_per_frame(a, b), [expected], rtol=1e-6)


def test_ssim_identical_and_ordered_by_noise():
    clip = frames(2)
    np.testing.assert_allclose(ssim_per_frame(clip, clip), 1.0, atol=1e-5)  # float32 statistics
    mild, strong = noisy(clip, 5), noisy(clip, 30)
    assert ssim_per_frame(clip, mild).mean() > ssim_per_frame(clip, strong).mean() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        ssim_per_frame(clip, clip[:2])


def test_reported_ssim_is_torchmetrics_default_so_evaluation_numbers_hold():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    clip = frames(3, (6, 64, 64, 3))
    other = noisy(clip, 20)
    unit = [torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 for x in (other, clip)]
    theirs = tm_ssim(*unit, data_range=1.0, reduction="none").double().numpy()
    np.testing.assert_allclose(ssim_per_frame(other, clip), theirs, atol=1e-6)


@pytest.mark.parametrize("shape,window,sigma,data_range", [
    ((4, 3, 32, 40), 11, 1.5, 1.0), ((2, 3, 64, 64), 11, 1.5, 255.0), ((3, 1, 16, 12), 7, 0.8, 2.0),
    ((2, 5, 23, 31), 7, 0.8, 8.0),
])
def test_ssim_matches_torchmetrics_for_other_windows(shape, window, sigma, data_range):
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    g = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=g) * data_range
    y = (x + 0.15 * data_range * torch.randn(shape, generator=g)).clamp(0, data_range)
    ours = ssim(x, y, data_range, window_size=window, sigma=sigma, reduction="none")
    theirs = tm_ssim(x, y, data_range=data_range, kernel_size=window, sigma=sigma, reduction="none")
    assert ours.shape == (shape[0],)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    torch.testing.assert_close(ssim(x, y, data_range, window, sigma), theirs.mean(), atol=1e-4, rtol=0)


def test_ssim_is_differentiable_one_for_identical_and_handles_small_images():
    x = torch.rand(2, 3, 5, 9)
    y = x.clone().requires_grad_(True)
    assert float(ssim(x, y.detach(), 1.0)) == pytest.approx(1.0, abs=1e-5)
    s = ssim(x, y + 0.1 * torch.randn_like(x), 1.0)  # window shrinks to 5x5 for a 5-pixel side
    s.backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 1, 8), torch.rand(1, 3, 1, 8), 1.0)


# -- one SSIM for train-ae and evaluate ---------------------------------------------------------------


def test_train_ae_and_evaluate_report_the_same_ssim_and_psnr_convention():
    """train-ae's closed-loop reconstruction SSIM is evaluate's SSIM of the same frames, and is what the
    former train-ae formula gave (torchmetrics, float64, data range 255: its `kernel_size=7` for frames
    under 64 px was ignored for a Gaussian window, so it was the 11-tap window all along)."""
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    from dvdm.codec.decompose import DecomposeConfig, decompose
    from dvdm.codec.residuals import reconstruct
    from dvdm.data.base import ClipSpec
    from dvdm.data.synthetic import SyntheticSource
    from dvdm.evaluate.frame_metrics import set_metrics
    from dvdm.stages.train_ae import evaluate_roundtrip

    block = 8
    clips = [c.frames for c in SyntheticSource(ClipSpec(frames=8, height=48, width=48), num_train=2, num_val=0,
                                               num_test=0, seed=3, textured_background_prob=1.0)]
    zero = lambda r: np.zeros(r.shape, np.float32)  # noqa: E731  (motion vectors alone: a lossy code)
    decoded, triples = [], []
    for clip in clips:
        d = decompose(clip, DecomposeConfig(block=block, search=block))
        triples.append((d.first_frame, d.mv, d.residual, {}))
        closed = decompose(clip, DecomposeConfig(block=block, search=block), roundtrip=lambda r: zero(r))
        decoded.append(reconstruct(closed.first_frame, closed.mv, zero(closed.residual), block))
    reported = evaluate_roundtrip(zero, triples, block, block)
    evaluated = set_metrics([d[1:] for d in decoded], [c[1:] for c in clips])
    assert 0 < reported["reconstruction_ssim"] < 0.999
    assert reported["reconstruction_ssim"] == pytest.approx(evaluated["ssim"], abs=1e-12)

    def former_train_ae_ssim(a: np.ndarray, b: np.ndarray) -> float:
        x, y = (torch.from_numpy(v).permute(0, 3, 1, 2).double() for v in (a, b))
        return float(tm_ssim(x, y, data_range=255.0, kernel_size=7))

    former = np.mean([former_train_ae_ssim(c[1:], d[1:]) for c, d in zip(clips, decoded)])
    assert reported["reconstruction_ssim"] == pytest.approx(former, abs=1e-6)
    assert math.isfinite(reported["residual_psnr"]) and reported["residual_psnr"] <= PSNR_CAP_DB
