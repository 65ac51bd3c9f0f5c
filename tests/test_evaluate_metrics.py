"""Frame metrics, temporal consistency, motion-following and folders of videos for `dvdm fvd`."""

from __future__ import annotations

import numpy as np
import pytest

from dvdm.data.base import ClipSpec
from dvdm.data.synthetic import COLORS, DIRECTIONS, SPEEDS, SyntheticSource, speeds_px
from dvdm.errors import ClipTooShortError, VideoError
from dvdm.evaluate.errors import EvaluationError
from dvdm.evaluate.frame_metrics import clip_fidelity, first_frame_fidelity, set_metrics, temporal_consistency
from dvdm.evaluate.motion_following import classify_velocity, estimate_motion, score_motion_following
from dvdm.evaluate.video_folder import iter_clips, list_video_folder, scan_video_folder
from dvdm.metrics.psnr import PSNR_CAP_DB, psnr_per_frame
from dvdm.metrics.ssim import ssim_per_frame
from dvdm.video import write_frames, write_gif, write_mp4


@pytest.fixture(scope="module")
def synthetic_clips():
    src = SyntheticSource(ClipSpec(frames=16, height=64, width=64), num_train=0, num_val=0, num_test=48, seed=11)
    return list(src)


def noisy(clip: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(clip + rng.normal(0, sigma, clip.shape), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ PSNR / SSIM


def test_psnr_ssim_identical_noisy_and_known_value(synthetic_clips):
    clip = synthetic_clips[0].frames[:4]
    assert (psnr_per_frame(clip, clip) == PSNR_CAP_DB).all()
    np.testing.assert_allclose(ssim_per_frame(clip, clip), 1.0, atol=1e-4)  # float32 statistics
    mild, strong = noisy(clip, 5), noisy(clip, 30)
    assert psnr_per_frame(clip, mild).mean() > psnr_per_frame(clip, strong).mean()
    assert ssim_per_frame(clip, mild).mean() > ssim_per_frame(clip, strong).mean()
    # a constant error of 16 levels: PSNR = 20 log10(255 / 16)
    shifted = (clip.astype(np.int16) + 16).clip(0, 255).astype(np.uint8)
    flat = np.full_like(clip, 100)
    np.testing.assert_allclose(psnr_per_frame(flat + 16, flat), 20 * np.log10(255 / 16), rtol=1e-6)
    result = clip_fidelity(shifted, clip)
    assert len(result["psnr_per_frame"]) == 4 and 0 < result["ssim"] < 1
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_per_frame(clip, clip[:2])


def test_first_frame_fidelity_and_set_metrics(synthetic_clips):
    gen = [c.frames for c in synthetic_clips[:3]]
    ff = first_frame_fidelity(gen[0], gen[0][0])
    assert ff["psnr"] == PSNR_CAP_DB and ff["ssim"] == pytest.approx(1.0, abs=1e-4)
    out = set_metrics([noisy(g, 10) for g in gen], gen)
    assert out["n"] == 3 and len(out["psnr_per_frame"]) == 16
    assert 20 < out["psnr"] < 40 and 0 < out["ssim"] < 1 and out["first_frame_psnr"] == pytest.approx(
        out["psnr_per_frame"][0], rel=0.05)
    with pytest.raises(EvaluationError):
        set_metrics([])


def test_set_metrics_reports_the_published_ssim_and_records_its_protocol(synthetic_clips):
    gen = [c.frames[:4] for c in synthetic_clips[:2]]
    fake = [noisy(g, 10) for g in gen]
    out = set_metrics(fake, gen)
    published = np.mean([ssim_per_frame(f, g).mean() for f, g in zip(fake, gen)])
    assert out["ssim"] == pytest.approx(published, abs=1e-12)
    assert out["ssim_protocol"]["convention"] == "valid" and "skimage" in out["ssim_protocol"]["same_as"]
    old = set_metrics(fake, gen, ssim_convention="padded")
    assert old["ssim"] == pytest.approx(np.mean([ssim_per_frame(f, g, convention="padded").mean()
                                                 for f, g in zip(fake, gen)]), abs=1e-12)
    assert old["ssim_protocol"]["convention"] == "padded" and old["psnr"] == out["psnr"]
    assert abs(old["ssim"] - out["ssim"]) > 1e-4
    assert "ssim_protocol" not in set_metrics(fake)  # no SSIM without references, so no protocol


def test_warping_error_is_low_for_true_motion_and_high_for_broken_motion(synthetic_clips):
    clips = [c.frames for c in synthetic_clips[:6]]
    rng = np.random.default_rng(1)
    true = np.mean([temporal_consistency(c)["warping_error"] for c in clips])
    shuffled = np.mean([temporal_consistency(c[rng.permutation(16)])["warping_error"] for c in clips])
    flicker = np.mean([temporal_consistency(noisy(c, 12, i))["warping_error"] for i, c in enumerate(clips)])
    frozen = temporal_consistency(np.repeat(clips[0][:1], 16, axis=0))
    assert frozen == {"warping_error": 0.0, "frame_difference": 0.0}
    assert true < 1.0  # block motion explains rigid translation almost exactly
    assert shuffled > 2 * true and flicker > 5 * true


# ------------------------------------------------------------------------------------ motion-following


def test_motion_following_is_perfect_on_ground_truth(synthetic_clips):
    r = score_motion_following([c.frames for c in synthetic_clips], [c.labels for c in synthetic_clips])
    assert r["direction_accuracy"] == r["speed_accuracy"] == r["motion_accuracy"] == 1.0
    assert r["velocity_error"] == 0.0 and r["object_not_found"] == 0 and r["n"] == 48


@pytest.mark.parametrize("frames,size", [(16, 128), (8, 32), (8, 48), (8, 96), (5, 24), (16, 80)])
def test_motion_following_is_perfect_on_ground_truth_at_every_size(frames, size):
    """Regression: below 64 px Python's round(0.5) == 0 made "slowly" a 0 px motion (71 % at 32x32x8)."""
    clips = list(SyntheticSource(ClipSpec(frames=frames, height=size, width=size), num_train=0, num_val=0,
                                 num_test=24, seed=2))
    assert all(o["speed_px"] >= 1 for c in clips for o in c.labels["objects"])
    r = score_motion_following([c.frames for c in clips], [c.labels for c in clips])
    assert r["motion_accuracy"] == 1.0 and r["velocity_error"] == 0.0


@pytest.mark.parametrize("size", [16, 24, 32, 48, 64, 80, 96, 128, 256])
def test_synthetic_speeds_are_distinct_and_nonzero(size):
    speeds = speeds_px(size, size)
    assert speeds[0] >= 1 and speeds[0] < speeds[1] < speeds[2]
    assert speeds_px(64, 64) == [1, 2, 3] and speeds_px(128, 128) == [2, 4, 6]


def test_motion_following_fails_on_reversed_and_frozen_motion(synthetic_clips):
    videos, labels = [c.frames for c in synthetic_clips], [c.labels for c in synthetic_clips]
    reversed_ = score_motion_following([v[::-1] for v in videos], labels)
    assert reversed_["direction_accuracy"] == 0.0 and reversed_["speed_accuracy"] == 1.0
    frozen = score_motion_following([np.repeat(v[:1], 16, axis=0) for v in videos], labels)
    assert frozen["direction_accuracy"] == 0.0 and frozen["speed_accuracy"] == 0.0


def _moving_square(color: tuple[int, int, int], velocity: tuple[int, int], size: int = 64) -> np.ndarray:
    frames = np.full((16, size, size, 3), 40, np.uint8)
    x0 = 24 - 7 * velocity[0]  # centred path, inside the frame for |v| <= 3
    y0 = 24 - 7 * velocity[1]
    for t in range(16):
        x, y = x0 + velocity[0] * t, y0 + velocity[1] * t
        frames[t, y:y + 12, x:x + 12] = color
    return frames


def test_motion_following_is_near_chance_on_random_motion():
    """Clips whose motion is drawn independently of the prompt score about 1/8 (direction), 1/3 (speed)."""
    rng = np.random.default_rng(3)
    videos, labels = [], []
    for _ in range(240):
        d, s = rng.integers(len(DIRECTIONS)), rng.integers(len(SPEEDS))
        (ux, uy), _ = DIRECTIONS[d]
        videos.append(_moving_square(COLORS["red"], (ux * SPEEDS[s][1], uy * SPEEDS[s][1])))
        labels.append({"objects": [{"color": "red"}], "direction_index": int(rng.integers(len(DIRECTIONS))),
                       "speed_index": int(rng.integers(len(SPEEDS)))})
    r = score_motion_following(videos, labels)
    assert 0.05 < r["direction_accuracy"] < 0.22
    assert 0.2 < r["speed_accuracy"] < 0.47
    assert r["object_not_found"] == 0


def test_motion_estimate_details():
    est = estimate_motion(_moving_square(COLORS["cyan"], (-2, 2)), COLORS["cyan"])
    assert est.velocity == (-2.0, 2.0) and est.frames_found == 16
    assert DIRECTIONS[est.direction_index][1] == "down and to the left" and SPEEDS[est.speed_index][0] == "steadily"
    lost = estimate_motion(_moving_square(COLORS["cyan"], (1, 0)), COLORS["red"])
    assert lost.velocity is None and lost.direction_index == -1
    assert classify_velocity((0.2, -0.1), [1, 2, 3]) == (-1, -1)
    with pytest.raises(EvaluationError, match="objects\\[0\\].color"):
        score_motion_following([_moving_square(COLORS["red"], (1, 0))], [{"direction_index": 0}])


# ------------------------------------------------------------------------------------ folders of videos


def test_video_folder_lists_files_and_frame_folders_in_natural_order(tmp_path):
    rng = np.random.default_rng(4)
    clip = lambda t=16: rng.integers(0, 255, (t, 32, 32, 3), dtype=np.uint8)  # noqa: E731
    write_mp4(tmp_path / "v10.mp4", clip())
    write_mp4(tmp_path / "v2.mp4", clip())
    write_gif(tmp_path / "v3.gif", clip())
    write_frames(tmp_path / "v4", clip())
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".v5.mp4").write_bytes(b"half-written")
    (tmp_path / "empty_dir").mkdir()
    paths = scan_video_folder(tmp_path, min_frames=16)
    assert [p.name for p in paths] == ["v2.mp4", "v3.gif", "v4", "v10.mp4"]
    clips = list(iter_clips(paths, 16))
    assert all(c.shape == (16, 32, 32, 3) and c.dtype == np.uint8 for c in clips)


def test_video_folder_bad_input(tmp_path):
    with pytest.raises(VideoError, match="no such folder"):
        list_video_folder(tmp_path / "missing")
    write_frames(tmp_path / "frames_here", np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(EvaluationError, match="its own subfolder"):
        list_video_folder(tmp_path / "frames_here")
    with pytest.raises(ClipTooShortError, match="1 of 1 clips"):
        scan_video_folder(tmp_path, min_frames=16)
