"""dvdm.metrics: PSNR and SSIM against known values; the reported SSIM against scikit-image reference values
(the published protocol), the "padded" SSIM against torchmetrics (dvdm's convention before issue 13, still
the autoencoder loss's), and one SSIM for train-ae and evaluate."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from dvdm.metrics.psnr import PSNR_CAP_DB, mse, psnr, psnr_of_mse, psnr_per_frame
from dvdm.metrics.ssim import K1, PADDED, PUBLISHED, ssim, ssim_per_frame, ssim_protocol


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


def hash_noise(shape: tuple[int, ...], salt: int) -> np.ndarray:
    """Deterministic pseudo-random uint8 from an integer hash of the element index (no RNG stream, so the
    frames below, and the reference values computed on them, do not depend on numpy's generators)."""
    i = np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(salt) * np.uint64(1_000_003)
    i = (i * np.uint64(2654435761)) % np.uint64(2**32)
    i ^= i >> np.uint64(13)
    i = (i * np.uint64(2246822519)) % np.uint64(2**32)
    return ((i >> np.uint64(8)) % np.uint64(256)).astype(np.uint8).reshape(shape)


def reference_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three fixed uint8 (H, W, 3) frame pairs: smooth colour waves vs a shifted, dimmed copy (64x64),
    blocky noise vs a noisier copy (64x64), a checkerboard vs a noisy copy (48x80, not square)."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float64)
    c = np.arange(3, dtype=np.float64)
    smooth = 128 + 90 * np.sin(x[..., None] / (5 + c)) * np.cos(y[..., None] / (7 - c))
    wave = np.clip(np.rint(smooth), 0, 255).astype(np.uint8)
    shifted = np.clip(np.rint(np.roll(smooth, 1, axis=1) * 0.9 + 20), 0, 255).astype(np.uint8)
    blocky = np.repeat(np.repeat(hash_noise((16, 16, 3), 2), 4, axis=0), 4, axis=1)
    noisier = np.clip(blocky.astype(np.int16) + (hash_noise((64, 64, 3), 1).astype(np.int16) - 128) // 4,
                      0, 255).astype(np.uint8)
    wy, wx = np.mgrid[0:48, 0:80]
    checker = ((wx // 8 + wy // 8) % 2 * 200 + 30).astype(np.uint8)[..., None].repeat(3, -1)
    noisy_checker = np.clip(checker.astype(np.int16) + (hash_noise((48, 80, 3), 3).astype(np.int16) - 128) // 3,
                            0, 255).astype(np.uint8)
    return {"wave_shifted": (wave, shifted), "blocky_noisier": (blocky, noisier),
            "checker_48x80": (checker, noisy_checker)}


# Computed once with scikit-image 0.26.0 (numpy 2.4.6, scipy 1.17.1), in a separate virtual environment
# (scikit-image is not a dvdm dependency), on the pairs above:
#   from skimage.metrics import structural_similarity
#   structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
#                         data_range=255, channel_axis=-1)
# with a, b the uint8 (H, W, 3) frames (float64 inside; a / 255, b / 255 with data_range=1.0 give the same
# to 4e-16). This is the published SSIM protocol (Wang et al.'s 11-tap Gaussian window, sigma 1.5,
# K1 0.01, K2 0.03, valid region only, mean over channels), the same as tf.image.ssim's.
SKIMAGE_SSIM = {"wave_shifted": 0.9688689749780233, "blocky_noisier": 0.935542066532057,
                "checker_48x80": 0.9444015971099079}


def test_reported_ssim_equals_scikit_image_reference_values():
    """Issue 13 (8a): the reported SSIM is the published one. The former convention (torchmetrics' padded map)
    differs by 0.01-0.04 on these frames and fails this test."""
    for name, (a, b) in reference_pairs().items():
        ours = ssim_per_frame(a[None], b[None])[0]
        assert ours == pytest.approx(SKIMAGE_SSIM[name], abs=2e-6), name  # float32 here, float64 there
        assert ssim_per_frame(a[None], b[None], convention=PUBLISHED)[0] == ours
        assert abs(ssim_per_frame(a[None], b[None], convention=PADDED)[0] - SKIMAGE_SSIM[name]) > 5e-3, name


def test_reported_ssim_matches_scikit_image_on_random_frames_when_it_is_installed():
    """The same comparison, live, where scikit-image happens to be installed (it is not a dvdm dependency)."""
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image not installed (reference only)")
    rng = np.random.default_rng(5)
    for shape in ((64, 64, 3), (37, 90, 3), (11, 11, 3)):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        b = np.clip(a + rng.normal(0, 25, shape), 0, 255).astype(np.uint8)
        ref = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                            data_range=255, channel_axis=-1)
        assert ssim_per_frame(a[None], b[None])[0] == pytest.approx(ref, abs=2e-6), shape


def test_valid_ssim_is_the_padded_map_without_its_border():
    """The two conventions share every window that lies inside the frame: "valid" is the padded map's mean
    once the 5-pixel border (whose windows see reflected pixels) is cut away."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 30, 41, generator=g)
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    from dvdm.metrics.ssim import gaussian_window

    k = gaussian_window(11, 1.5)
    kernel = (k[:, None] * k[None, :]).expand(3, 1, 11, 11)

    def full_map(a, b):  # the padded SSIM map, written out
        a, b = (torch.nn.functional.pad(v, (5, 5, 5, 5), mode="reflect") for v in (a, b))
        f = lambda v: torch.nn.functional.conv2d(v, kernel, groups=3)  # noqa: E731
        ma, mb = f(a), f(b)
        va, vb, cov = f(a * a) - ma * ma, f(b * b) - mb * mb, f(a * b) - ma * mb
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        return ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))

    m = full_map(x, y)
    torch.testing.assert_close(ssim(x, y, 1.0, reduction="none", convention=PADDED), m.mean((1, 2, 3)),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(ssim(x, y, 1.0, reduction="none", convention=PUBLISHED),
                               m[..., 5:-5, 5:-5].mean((1, 2, 3)), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="convention"):
        ssim(x, y, 1.0, convention="same")


def test_ssim_of_flat_frames_is_the_luminance_term():
    """Flat frames have no variance or covariance, so SSIM = (2 a b + c1) / (a^2 + b^2 + c1) exactly."""
    a, b = np.full((1, 16, 16, 3), 100, np.uint8), np.full((1, 16, 16, 3), 140, np.uint8)
    x, y, c1 = 100 / 255, 140 / 255, K1 ** 2
    expected = (2 * x * y + c1) / (x * x + y * y + c1)
    for convention in (PUBLISHED, PADDED):
        np.testing.assert_allclose(ssim_per_frame(a, b, convention=convention), [expected], rtol=1e-6)


def test_ssim_identical_and_ordered_by_noise():
    clip = frames(2)
    np.testing.assert_allclose(ssim_per_frame(clip, clip), 1.0, atol=1e-5)  # float32 statistics
    mild, strong = noisy(clip, 5), noisy(clip, 30)
    assert ssim_per_frame(clip, mild).mean() > ssim_per_frame(clip, strong).mean() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        ssim_per_frame(clip, clip[:2])


def test_padded_ssim_is_torchmetrics_default_as_dvdm_reported_before_issue_13():
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    clip = frames(3, (6, 64, 64, 3))
    other = noisy(clip, 20)
    unit = [torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 for x in (other, clip)]
    theirs = tm_ssim(*unit, data_range=1.0, reduction="none").double().numpy()
    np.testing.assert_allclose(ssim_per_frame(other, clip, convention=PADDED), theirs, atol=1e-6)


@pytest.mark.parametrize("shape,window,sigma,data_range", [
    ((4, 3, 32, 40), 11, 1.5, 1.0), ((2, 3, 64, 64), 11, 1.5, 255.0), ((3, 1, 16, 12), 7, 0.8, 2.0),
    ((2, 5, 23, 31), 7, 0.8, 8.0),
])
def test_padded_ssim_matches_torchmetrics_for_other_windows(shape, window, sigma, data_range):
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim

    g = torch.Generator().manual_seed(1)
    x = torch.rand(shape, generator=g) * data_range
    y = (x + 0.15 * data_range * torch.randn(shape, generator=g)).clamp(0, data_range)
    ours = ssim(x, y, data_range, window_size=window, sigma=sigma, reduction="none", convention=PADDED)
    theirs = tm_ssim(x, y, data_range=data_range, kernel_size=window, sigma=sigma, reduction="none")
    assert ours.shape == (shape[0],)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    torch.testing.assert_close(ssim(x, y, data_range, window, sigma, convention=PADDED), theirs.mean(), atol=1e-4,
                               rtol=0)


@pytest.mark.parametrize("convention", [PUBLISHED, PADDED])
def test_ssim_is_differentiable_one_for_identical_and_handles_small_images(convention):
    x = torch.rand(2, 3, 5, 9)
    y = x.clone().requires_grad_(True)
    assert float(ssim(x, y.detach(), 1.0, convention=convention)) == pytest.approx(1.0, abs=1e-5)
    s = ssim(x, y + 0.1 * torch.randn_like(x), 1.0, convention=convention)  # window shrinks to 5x5
    s.backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 1, 8), torch.rand(1, 3, 1, 8), 1.0, convention=convention)


def test_the_autoencoder_loss_keeps_the_padded_ssim():
    """The residual autoencoder's `1 - SSIM` term is unchanged by issue 13: the padded convention, which
    `ssim()` keeps as its default (the reported SSIM moved to the published one)."""
    from dvdm.metrics.psnr import PEAK
    from dvdm.models.autoencoder import AutoencoderConfig, ResidualAutoencoder

    torch.manual_seed(0)
    model = ResidualAutoencoder(AutoencoderConfig(block=8, base_channels=4)).eval()
    torch.nn.init.normal_(model.decoder.conv_out.weight, std=0.1)
    r = torch.randint(-255, 256, (2, 3, 24, 20)).float()
    with torch.no_grad():
        out = model.loss(r)
        r_hat = model(r)[0]
    s = model.config.residual_scale
    padded = ssim(r_hat / s, r / s, data_range=PEAK / s, convention=PADDED)
    torch.testing.assert_close(out["ssim"], padded, atol=1e-6, rtol=0)
    assert abs(float(out["ssim"]) - float(ssim(r_hat / s, r / s, PEAK / s, convention=PUBLISHED))) > 1e-4


def test_ssim_protocol_names_the_convention():
    published, padded = ssim_protocol(), ssim_protocol(PADDED)
    assert published["convention"] == "valid" and "use_sample_covariance=False" in published["same_as"]
    assert padded["convention"] == "padded" and "torchmetrics" in padded["same_as"]
    assert (published["k1"], published["k2"], published["data_range"]) == (0.01, 0.03, 1.0)
    with pytest.raises(ValueError):
        ssim_protocol("torchmetrics")


# -- one SSIM for train-ae and evaluate ---------------------------------------------------------------


def test_train_ae_and_evaluate_report_the_same_ssim_and_psnr_convention():
    """train-ae's closed-loop reconstruction SSIM is evaluate's SSIM of the same frames (the published,
    border-excluded convention), and the "padded" convention is what the former train-ae formula gave
    (torchmetrics, float64, data range 255: its `kernel_size=7` for frames under 64 px was ignored for a
    Gaussian window, so it was the 11-tap window all along)."""
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
    padded = np.mean([ssim_per_frame(d[1:], c[1:], convention=PADDED).mean() for c, d in zip(clips, decoded)])
    assert padded == pytest.approx(former, abs=1e-6)
    assert reported["reconstruction_ssim"] != pytest.approx(former, abs=1e-4)  # the convention did change
    assert math.isfinite(reported["residual_psnr"]) and reported["residual_psnr"] <= PSNR_CAP_DB
