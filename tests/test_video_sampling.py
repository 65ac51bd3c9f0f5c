"""Clip sampling: LFDM's uniform/random recipes, strides, and what happens with too-short videos."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdm.errors import ClipTooShortError, VideoError
from dvdm.video import jittered_uniform_indices, sample_clip, sample_indices


def test_uniform_is_lfdm_linspace():
    for n_total, n_frames in [(40, 16), (96, 16), (33, 16), (16, 16), (1000, 7)]:
        expected = np.linspace(0, n_total - 1, n_frames, dtype=int)
        np.testing.assert_array_equal(sample_indices(n_total, n_frames), expected)


def test_uniform_first_and_last_frame_and_start():
    idx = sample_indices(50, 5, start=10)
    assert idx[0] == 10 and idx[-1] == 49 and len(idx) == 5


def test_exact_length_takes_every_frame():
    np.testing.assert_array_equal(sample_indices(16, 16), np.arange(16))
    np.testing.assert_array_equal(sample_indices(31, 16, mode="stride", stride=2), np.arange(0, 31, 2))


def test_stride_with_start():
    np.testing.assert_array_equal(sample_indices(100, 4, mode="stride", stride=3, start=5), [5, 8, 11, 14])


def test_single_frame():
    assert sample_indices(1, 1).tolist() == [0]
    assert sample_indices(10, 1, mode="stride", stride=4, start=9).tolist() == [9]


def test_too_short_raises_with_clear_message():
    with pytest.raises(ClipTooShortError) as err:
        sample_indices(20, 16, mode="stride", stride=2)
    assert str(err.value) == "needs 16 frames (stride 2 from frame 0 -> 31 frames) but the video has 20"
    with pytest.raises(ClipTooShortError, match="uniform from frame 0 -> 16 frames"):
        sample_indices(10, 16)
    assert issubclass(ClipTooShortError, VideoError)


def test_too_short_message_names_the_source():
    with pytest.raises(ClipTooShortError, match=r"^clip\.mp4: needs 16 frames"):
        sample_indices(10, 16, source="clip.mp4")


def test_start_past_the_clip_end_is_too_short():
    with pytest.raises(ClipTooShortError):
        sample_indices(20, 8, start=15)


def test_pad_short_repeats_the_last_frame_like_lfdm():
    np.testing.assert_array_equal(sample_indices(10, 16, pad_short=True),
                                  np.pad(np.arange(10), (0, 6), mode="edge"))
    np.testing.assert_array_equal(sample_indices(20, 12, mode="stride", stride=2, pad_short=True),
                                  [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 18, 18])
    np.testing.assert_array_equal(sample_indices(20, 8, start=15, pad_short=True), [15, 16, 17, 18, 19, 19, 19, 19])


def test_nothing_to_pad_from_still_raises():
    with pytest.raises(ClipTooShortError):
        sample_indices(0, 4, pad_short=True)
    with pytest.raises(ClipTooShortError):
        sample_indices(10, 4, start=10, pad_short=True)


@pytest.mark.parametrize("kwargs", [dict(n_frames=0), dict(stride=0, mode="stride"), dict(start=-1),
                                    dict(mode="random"), dict(n_total=-1)])
def test_invalid_arguments(kwargs):
    args = dict(n_total=10, n_frames=4) | kwargs
    with pytest.raises(ValueError):
        sample_indices(args.pop("n_total"), args.pop("n_frames"), **args)


def test_sample_clip_takes_the_frames():
    frames = np.arange(30)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    clip = sample_clip(frames, 4, mode="stride", stride=5, start=1)
    assert clip.shape == (4, 2, 2, 3)
    np.testing.assert_array_equal(clip[:, 0, 0, 0], [1, 6, 11, 16])
    with pytest.raises(ClipTooShortError):
        sample_clip(frames, 40)


def test_jittered_is_reproducible_and_keeps_the_ends():
    a = jittered_uniform_indices(96, 16, np.random.default_rng(3))
    b = jittered_uniform_indices(96, 16, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a[0] == 0 and a[-1] == 95 and len(a) == 16
    assert np.all(np.diff(a) >= 0)


def test_jittered_stays_between_grid_neighbours_and_actually_moves():
    grid = sample_indices(96, 16)
    rng = np.random.default_rng(0)
    moved = False
    for _ in range(50):
        idx = jittered_uniform_indices(96, 16, rng)
        # After sorting, index i still lies strictly inside (grid[i-1], grid[i+1]).
        assert np.all(idx[1:-1] > grid[:-2]) and np.all(idx[1:-1] < grid[2:])
        moved |= not np.array_equal(idx, grid)
    assert moved


def test_jittered_tight_grid_cannot_move():
    np.testing.assert_array_equal(jittered_uniform_indices(16, 16, 0), np.arange(16))
    np.testing.assert_array_equal(jittered_uniform_indices(9, 2, 0), [0, 8])


def test_jittered_too_short():
    with pytest.raises(ClipTooShortError):
        jittered_uniform_indices(10, 16, 0)
    np.testing.assert_array_equal(jittered_uniform_indices(10, 12, 0, pad_short=True), list(range(10)) + [9, 9])


@settings(max_examples=300, deadline=None)
@given(n_total=st.integers(0, 300), n_frames=st.integers(1, 64), stride=st.integers(1, 8),
       start=st.integers(0, 50), mode=st.sampled_from(["uniform", "stride"]), pad_short=st.booleans())
def test_sample_indices_invariants(n_total, n_frames, stride, start, mode, pad_short):
    try:
        idx = sample_indices(n_total, n_frames, mode=mode, stride=stride, start=start, pad_short=pad_short)
    except ClipTooShortError:
        span = (stride if mode == "stride" else 1) * (n_frames - 1) + 1
        assert start + span > n_total and (not pad_short or start >= n_total)
        return
    assert idx.shape == (n_frames,) and idx.dtype.kind == "i"
    assert np.all(np.diff(idx) >= 0)
    assert idx[0] == start and idx[-1] <= n_total - 1
    if mode == "stride":
        assert np.all(np.diff(idx) % stride == 0)


@settings(max_examples=200, deadline=None)
@given(n_total=st.integers(1, 500), n_frames=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_jittered_invariants(n_total, n_frames, seed):
    idx = jittered_uniform_indices(n_total, n_frames, seed, pad_short=True)
    assert idx.shape == (n_frames,)
    assert np.all(np.diff(idx) >= 0) and idx[0] == 0 and idx[-1] <= n_total - 1
    if n_frames >= 2:
        assert idx[-1] == n_total - 1  # the grid ends on the last frame, padded or not
