"""Resize and crop on uint8 clips and single frames."""

from __future__ import annotations

import numpy as np
import pytest

from dvdm.video import center_crop, crop, resize, resize_short_side_and_center_crop


@pytest.fixture
def clip() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 24, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["area", "bilinear", "nearest"])
def test_resize_shapes_and_dtype(clip, mode):
    out = resize(clip, 12, 16, mode=mode)
    assert out.shape == (3, 12, 16, 3) and out.dtype == np.uint8
    single = resize(clip[0], 48, 50, mode=mode)
    assert single.shape == (48, 50, 3) and single.dtype == np.uint8
    np.testing.assert_array_equal(resize(clip, 12, 16, mode=mode)[1], resize(clip[1], 12, 16, mode=mode))


@pytest.mark.parametrize("mode", ["area", "bilinear", "nearest"])
def test_resize_keeps_flat_colour(mode):
    flat = np.full((2, 17, 23, 3), (10, 200, 77), np.uint8)
    for h, w in [(5, 7), (40, 50), (17, 23)]:
        assert np.all(resize(flat, h, w, mode=mode) == np.array([10, 200, 77], np.uint8))


@pytest.mark.parametrize("fy, fx", [(2, 2), (3, 4), (1, 2)])
def test_area_whole_factor_is_the_rounded_block_mean(clip, fy, fx):
    # What cv2.INTER_AREA gives for whole-number factors: each block's mean, rounded once.
    h, w = 24 // fy, 40 // fx
    out = resize(clip, h, w, mode="area").astype(float)
    blocks = clip.reshape(3, h, fy, w, fx, 3).astype(float).mean(axis=(2, 4))
    assert np.abs(out - blocks).max() <= 0.5 + 1e-6


def test_area_fractional_factor_stays_within_one_level_of_the_area_mean():
    # 3 -> 2 pixels: output 0 covers pixel 0 and half of pixel 1, output 1 the other half and pixel 2.
    rng = np.random.default_rng(1)
    clip = rng.integers(0, 256, (2, 30, 45, 3), dtype=np.uint8)
    out = resize(clip, 20, 30, mode="area").astype(float)
    weights = np.array([[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
    blocks = clip.reshape(2, 10, 3, 15, 3, 3).astype(float)
    expected = np.einsum("ai,bj,tyixjc->tyaxbc", weights, weights, blocks).reshape(2, 20, 30, 3)
    assert np.abs(out - expected).max() <= 1.0 + 1e-6


def test_nearest_upscale_repeats_pixels(clip):
    out = resize(clip, 48, 80, mode="nearest")
    np.testing.assert_array_equal(out, clip.repeat(2, axis=1).repeat(2, axis=2))


def test_area_upscale_interpolates_instead_of_blocking():
    ramp = np.tile(np.arange(0, 256, 32, dtype=np.uint8)[None, :, None], (8, 1, 3))  # 8x8 horizontal ramp
    out = resize(ramp, 8, 32, mode="area")
    assert len(np.unique(out[0, :, 0])) > 8  # bilinear fills in new values; a box would only repeat


def test_resize_same_size_is_a_copy(clip):
    out = resize(clip, 24, 40)
    np.testing.assert_array_equal(out, clip)
    assert not np.shares_memory(out, clip)


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8),
                                 np.zeros((2, 4, 4, 4), np.uint8)])
def test_resize_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        resize(bad, 2, 2)


def test_resize_rejects_bad_mode_and_size(clip):
    with pytest.raises(ValueError, match="mode"):
        resize(clip, 4, 4, mode="bicubic")
    with pytest.raises(ValueError):
        resize(clip, 0, 4)


def test_crop_takes_the_box(clip):
    out = crop(clip, 2, 5, 10, 20)
    assert out.shape == (3, 10, 20, 3)
    np.testing.assert_array_equal(out, clip[:, 2:12, 5:25])
    np.testing.assert_array_equal(crop(clip[0], 0, 0, 24, 40), clip[0])


@pytest.mark.parametrize("box", [(0, 0, 25, 40), (0, 1, 24, 40), (-1, 0, 4, 4), (20, 30, 5, 5), (0, 0, 0, 4)])
def test_crop_outside_the_frame_raises(clip, box):
    with pytest.raises(ValueError, match=r"does not fit inside the 24x40"):
        crop(clip, *box)


def test_center_crop(clip):
    np.testing.assert_array_equal(center_crop(clip, 20, 30), clip[:, 2:22, 5:35])
    np.testing.assert_array_equal(center_crop(clip[0], 23, 39), clip[0, 0:23, 0:39])  # odd margin: extra at end
    with pytest.raises(ValueError):
        center_crop(clip, 30, 30)


def test_resize_short_side_and_center_crop_landscape_and_portrait():
    # Left half red, right half blue; a 40x80 frame becomes 20x40, then the centre 20x20 keeps both halves.
    frame = np.zeros((40, 80, 3), np.uint8)
    frame[:, :40, 0] = 255
    frame[:, 40:, 2] = 255
    out = resize_short_side_and_center_crop(frame[None], 20)
    assert out.shape == (1, 20, 20, 3)
    assert np.all(out[0, :, :10, 0] == 255) and np.all(out[0, :, 10:, 2] == 255)
    portrait = resize_short_side_and_center_crop(np.zeros((2, 90, 30, 3), np.uint8), 16)
    assert portrait.shape == (2, 16, 16, 3)
    assert resize_short_side_and_center_crop(np.zeros((7, 5000, 3), np.uint8), 4).shape == (4, 4, 3)
