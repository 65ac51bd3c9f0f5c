"""The codec decomposition is exactly invertible, for any size, block size and content."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvdm.codec.compensate import grid_shape, motion_compensate
from dvdm.codec.decompose import DecomposeConfig, decompose
from dvdm.codec.differences import frame_differences, integrate_differences
from dvdm.codec.kernels import residual_kernel
from dvdm.codec.residuals import closed_loop_residuals, reconstruct


def _naive_compensate(ref: np.ndarray, mv: np.ndarray, block: int) -> np.ndarray:
    """Pixel-by-pixel definition of block motion compensation, to check the vectorised one against."""
    h, w, _ = ref.shape
    out = np.empty_like(ref)
    for y in range(h):
        for x in range(w):
            dx, dy = mv[y // block, x // block]
            out[y, x] = ref[min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)]
    return out


@st.composite
def clips(draw, max_side: int = 40):
    t = draw(st.integers(2, 5))
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    kind = draw(st.sampled_from(["noise", "flat", "shifted", "extremes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "noise":
        v = rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    elif kind == "flat":
        v = np.broadcast_to(rng.integers(0, 256, (t, 1, 1, 3), dtype=np.uint8), (t, h, w, 3)).copy()
    elif kind == "extremes":  # only 0 and 255: residuals reach +-255
        v = (rng.integers(0, 2, (t, h, w, 3)) * 255).astype(np.uint8)
    else:
        big = rng.integers(0, 256, (h + 2 * t + 2, w + 2 * t + 2, 3), dtype=np.uint8)
        v = np.stack([big[k:k + h, 2 * k:2 * k + w] for k in range(t)])
    return v


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(v=clips(), block=st.sampled_from([2, 4, 8, 16, 7]), search=st.integers(0, 9),
       strategy=st.sampled_from(["fast", "full"]), threshold=st.sampled_from([0.0, 2.0]))
def test_decompose_reconstruct_is_exact(v, block, search, strategy, threshold):
    d = decompose(v, DecomposeConfig(block=block, search=search, strategy=strategy, static_threshold=threshold))
    assert d.mv.shape == (v.shape[0] - 1, *grid_shape(v.shape[1], v.shape[2], block), 2)
    assert d.residual.dtype == np.int16 and d.residual.shape == (v.shape[0] - 1, *v.shape[1:])
    assert np.abs(d.mv).max(initial=0) <= search
    np.testing.assert_array_equal(d.reconstruct(), v)


@settings(max_examples=40, deadline=None)
@given(v=clips(max_side=24), block=st.sampled_from([3, 4, 8]), seed=st.integers(0, 1000))
def test_compensation_matches_pixelwise_definition_and_kernel(v, block, seed):
    rng = np.random.default_rng(seed)
    t, h, w, _ = v.shape
    mv = rng.integers(-6, 7, (t - 1, *grid_shape(h, w, block), 2)).astype(np.int16)
    pred = motion_compensate(v[:-1], mv, block)
    for k in range(t - 1):
        np.testing.assert_array_equal(pred[k], _naive_compensate(v[k], mv[k], block))
    # the compiled encoder-side residual agrees bit for bit with the numpy decoder
    np.testing.assert_array_equal(residual_kernel(v[1:], v[:-1], mv, block),
                                  v[1:].astype(np.int16) - pred.astype(np.int16))
    res, recon = closed_loop_residuals(v, mv, block)
    np.testing.assert_array_equal(recon, v)
    np.testing.assert_array_equal(reconstruct(v[0], mv, res, block), v)


@settings(max_examples=40, deadline=None)
@given(v=clips(), reference=st.sampled_from(["first", "previous"]))
def test_frame_differences_are_exactly_invertible(v, reference):
    d = frame_differences(v, reference)
    assert d.dtype == np.int16 and d.shape == (v.shape[0] - 1, *v.shape[1:])
    np.testing.assert_array_equal(integrate_differences(v[0], d, reference), v)


def test_closed_loop_with_lossy_residuals_does_not_drift():
    """With a lossy residual codec each residual is taken against the *reconstructed* previous frame, so the
    reconstruction error stays bounded by the codec's own error instead of accumulating."""
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    v = np.stack([big[k:k + 48, 2 * k:2 * k + 48] for k in range(12)])
    quantise = lambda r: (np.round(r / 8.0) * 8).astype(np.int16)  # noqa: E731 - error <= 4 per value
    d = decompose(v, DecomposeConfig(block=8, search=8), roundtrip=quantise)
    lossy = reconstruct(d.first_frame, d.mv, np.stack([quantise(r) for r in d.residual]), d.block)
    assert np.abs(lossy.astype(int) - v).max() <= 4
    # open loop (residuals against the original frames, then quantised) drifts beyond that bound
    open_res = np.stack([quantise(r) for r in decompose(v, DecomposeConfig(block=8, search=8)).residual])
    drift = reconstruct(v[0], d.mv, open_res, 8)
    assert np.abs(drift.astype(int) - v).max() > 4


@pytest.mark.parametrize("shape", [(2, 1, 1, 3), (3, 17, 5, 3), (4, 65, 33, 3)])
def test_odd_and_tiny_sizes_roundtrip(shape):
    v = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    for block in (8, 16):
        d = decompose(v, DecomposeConfig(block=block, search=4))
        np.testing.assert_array_equal(d.reconstruct(), v)


def test_bad_inputs_are_rejected_clearly():
    with pytest.raises(ValueError, match="uint8"):
        decompose(np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="at least 2 frames"):
        decompose(np.zeros((1, 8, 8, 3), np.uint8))
    from dvdm.errors import ConfigError

    with pytest.raises(ConfigError, match="search strategy"):
        DecomposeConfig(strategy="magic")
    with pytest.raises(ConfigError, match="mv_source"):
        DecomposeConfig(mv_source="oracle")


REAL_CLIPS = ["bair/bair_00026", "bair/bair_action_free_00000", "kth/kth_00004", "kinetics/demo.mp4",
              "captioned/test.mp4", "ucf101_probable/test.avi", "ntu_rgbd/S001C001P001R001A001_rgb.avi"]


@pytest.mark.real
@pytest.mark.parametrize("name", REAL_CLIPS)
@pytest.mark.parametrize("mv_source", ["search", "ffmpeg"])
def test_real_fixtures_roundtrip_exactly(real_data, name, mv_source):
    from dvdm.video import read_video

    path = real_data / name
    if not path.exists():
        pytest.skip(f"{path} is absent")
    frames = read_video(path, max_frames=8 if "ntu" in name else 16).frames
    for block in (8, 16):
        d = decompose(frames, DecomposeConfig(block=block, search=block, mv_source=mv_source))
        np.testing.assert_array_equal(d.reconstruct(), frames)
        assert np.abs(d.residual).mean() <= np.abs(frames[1:].astype(np.int16) - frames[:-1]).mean()
