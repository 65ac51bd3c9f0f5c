"""Block matching recovers known motion exactly and follows FFmpeg's sign convention."""

from __future__ import annotations

import numpy as np
import pytest

from dvdm.codec.compensate import motion_compensate
from dvdm.codec.decompose import DecomposeConfig, decompose
from dvdm.codec.search import SearchConfig, match_blocks


def smooth_texture(h: int, w: int, seed: int = 0, blur: int = 3) -> np.ndarray:
    """Random texture smoothed by box blurs: natural-image-like, so a fast search has a gradient to follow."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
    for axis in (0, 1):
        c = np.cumsum(np.pad(a, [(blur, blur) if i == axis else (0, 0) for i in range(3)], mode="edge"), axis=axis)
        n = c.shape[axis]
        a = (np.take(c, range(2 * blur, n), axis=axis) - np.take(c, range(0, n - 2 * blur), axis=axis)) / (2 * blur)
    a = (a - a.min()) / (a.max() - a.min()) * 255
    return np.rint(a).astype(np.uint8)


def translating(dx: int, dy: int, t: int = 6, size: int = 64, texture: np.ndarray | None = None) -> np.ndarray:
    """Content moving (dx, dy) px per frame: frame_k[y, x] = frame_{k-1}[y - dy, x - dx]."""
    pad = 40
    big = smooth_texture(size + 2 * pad, size + 2 * pad) if texture is None else texture
    return np.stack([big[pad - k * dy:pad - k * dy + size, pad - k * dx:pad - k * dx + size] for k in range(t)])


@pytest.mark.parametrize("strategy", ["fast", "full"])
@pytest.mark.parametrize("velocity", [(3, 2), (-5, 0), (0, 7), (-4, -6), (1, -1), (0, 0)])
def test_known_translation_is_recovered_exactly(strategy, velocity):
    dx, dy = velocity
    v = translating(dx, dy)
    mv = match_blocks(v[1:], v[:-1], SearchConfig(block=8, search=8, strategy=strategy))
    # vectors point back to where the content came from: (-dx, -dy), FFmpeg's convention
    interior = mv[:, 1:-1, 1:-1]
    assert (interior[..., 0] == -dx).all() and (interior[..., 1] == -dy).all()
    pred = motion_compensate(v[:-1], mv, 8)
    np.testing.assert_array_equal(pred[:, 8:-8, 8:-8], v[1:, 8:-8, 8:-8])


def test_full_search_finds_translation_of_white_noise():
    """White noise has no smooth SAD landscape: only the exhaustive search is guaranteed to find it."""
    noise = np.random.default_rng(3).integers(0, 256, (144, 144, 3), dtype=np.uint8)
    v = translating(3, -2, texture=noise)
    mv = match_blocks(v[1:], v[:-1], SearchConfig(block=16, search=8, strategy="full"))
    assert (mv[:, 1:-1, 1:-1, 0] == -3).all() and (mv[:, 1:-1, 1:-1, 1] == 2).all()


def test_fast_search_is_close_to_exhaustive_on_real_video(real_data):
    from dvdm.video import read_video

    v = read_video(real_data / "kinetics" / "demo.mp4", max_frames=32).frames[::2, 64:192, 100:228]
    fast = decompose(v, DecomposeConfig(block=16, search=16, strategy="fast"))
    full = decompose(v, DecomposeConfig(block=16, search=16, strategy="full"))
    zero = np.abs(v[1:].astype(np.int16) - v[:-1]).mean()
    r_fast, r_full = np.abs(fast.residual).mean(), np.abs(full.residual).mean()
    assert r_full <= r_fast <= 1.15 * r_full < 0.5 * zero
    np.testing.assert_array_equal(fast.reconstruct(), v)


def test_static_blocks_keep_zero_vectors_and_threshold_skips_search():
    v = translating(0, 0)
    mv = match_blocks(v[1:], v[:-1], SearchConfig(block=8, search=8))
    assert not mv.any()
    # a tiny change everywhere: with a threshold above it, every block stays at zero
    noisy = v.copy()
    noisy[1:] = np.clip(noisy[1:].astype(int) + 1, 0, 255).astype(np.uint8)
    mv = match_blocks(noisy[1:], noisy[:-1], SearchConfig(block=8, search=8, static_threshold=1.5))
    assert not mv.any()


def test_search_range_limits_vectors():
    v = translating(7, 0)
    mv = match_blocks(v[1:], v[:-1], SearchConfig(block=8, search=3, strategy="full"))
    assert np.abs(mv).max() <= 3


def test_results_are_deterministic():
    v = translating(2, 3)
    cfg = SearchConfig(block=8, search=8)
    np.testing.assert_array_equal(match_blocks(v[1:], v[:-1], cfg), match_blocks(v[1:], v[:-1], cfg))


def _isoluminant_object(match: str) -> np.ndarray:
    """Vectors of a blue square moving 2 px right per frame on a grey background of the same luma."""
    grey = (50 * 77 + 80 * 150 + 230 * 29 + 128) >> 8        # the luma of (50, 80, 230)
    frames = np.full((4, 32, 32, 3), grey, np.uint8)
    for k in range(4):
        frames[k, 10:18, 6 + 2 * k:14 + 2 * k] = (50, 80, 230)
    return match_blocks(frames[1:], frames[:-1], SearchConfig(block=8, search=8, strategy="full", match=match))


def test_chroma_matching_sees_an_object_that_luma_cannot():
    """Luma matching is blind to an object of its background's luma (every SAD is 0, so every vector stays
    zero and the motion would go to the residual); luma + chroma finds the true motion."""
    assert not _isoluminant_object("luma").any()
    yuv = _isoluminant_object("yuv")
    assert (yuv[:, 1, 1] == (-2, 0)).all()  # the block the square covers in every frame points back 2 px


@pytest.mark.parametrize("velocity", [(3, 2), (-4, -6)])
def test_chroma_matching_recovers_known_translation(velocity):
    dx, dy = velocity
    v = translating(dx, dy)
    mv = match_blocks(v[1:], v[:-1], SearchConfig(block=8, search=8, match="yuv"))
    interior = mv[:, 1:-1, 1:-1]
    assert (interior[..., 0] == -dx).all() and (interior[..., 1] == -dy).all()


def test_unknown_match_planes_are_refused():
    from dvdm.errors import ConfigError

    with pytest.raises(ConfigError, match="match must be one of"):
        SearchConfig(match="rgb")
