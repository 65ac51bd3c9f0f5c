"""Motion-following on the synthetic data: does the generated object move the way the prompt says?

The prompt of a synthetic clip names the first object's colour, shape, direction and speed, and ingest keeps
them as labels (`objects[0].color`, `direction_index`, `speed_index`, `velocity`). From the generated video
alone we track that object: in every frame, the pixels within `tolerance` (RGB distance) of the prompt's
colour; the object's position is their median (robust to a few stray pixels of a similar colour). The
velocity is the Theil-Sen slope of the positions over time (the median of all pairwise slopes, so a few
frames where the object is lost or smeared do not bend it). It is then classified like the captions:
the nearest of the 8 directions, the nearest of the 3 speeds (px per frame at this size, measured as
max(|vx|, |vy|), which is what the generator moves diagonally), or "static" below half the slowest speed.

The tracked object is the one drawn on top (the captioned first object), and the palette colours are far
from the muted backgrounds (>= 70 in RGB distance), so on ground-truth clips the track is exact. Chance
levels are 1/8 for direction and 1/3 for speed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dvdm.data.synthetic import COLORS, DIRECTIONS, SPEEDS, speeds_px
from dvdm.evaluate.errors import EvaluationError

COLOR_TOLERANCE = 60.0  # RGB distance; the palette is >= 70 from any background the generator draws
MIN_PIXELS = 3          # fewer matching pixels than this in a frame: the object is not found there
STATIC = -1             # direction/speed index of an object that does not move (or is never found)


@dataclass(frozen=True)
class MotionEstimate:
    """The tracked object's motion. velocity is (vx, vy) in px per frame, y pointing down; None if not found."""

    velocity: tuple[float, float] | None
    direction_index: int
    speed_index: int
    frames_found: int


def object_positions(frames: np.ndarray, color: Sequence[int], tolerance: float = COLOR_TOLERANCE,
                     min_pixels: int = MIN_PIXELS) -> np.ndarray:
    """(T, 2) median (x, y) of the pixels near `color` in each uint8 (T, H, W, 3) frame; NaN where absent."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames (T, H, W, 3), got {frames.shape}")
    dist = np.linalg.norm(frames.astype(np.float32) - np.asarray(color, np.float32), axis=-1)
    out = np.full((frames.shape[0], 2), np.nan)
    for t, mask in enumerate(dist <= tolerance):
        ys, xs = np.nonzero(mask)
        if xs.size >= min_pixels:
            out[t] = np.median(xs), np.median(ys)
    return out


def theil_sen_velocity(positions: np.ndarray) -> tuple[tuple[float, float] | None, int]:
    """Median pairwise slope of (T, 2) positions (NaN rows skipped), and how many rows were usable."""
    t = np.nonzero(~np.isnan(positions).any(axis=1))[0]
    if t.size < 2:
        return None, int(t.size)
    i, j = np.triu_indices(t.size, k=1)
    slopes = (positions[t[j]] - positions[t[i]]) / (t[j] - t[i])[:, None]
    vx, vy = np.median(slopes, axis=0)
    return (float(vx), float(vy)), int(t.size)


def classify_velocity(velocity: tuple[float, float] | None, speeds: Sequence[int]) -> tuple[int, int]:
    """(direction_index, speed_index) of a velocity, as the captions would name it; STATIC when too slow."""
    if velocity is None:
        return STATIC, STATIC
    v = np.asarray(velocity, np.float64)
    magnitude = float(np.abs(v).max())
    if magnitude < 0.5 * min(speeds):
        return STATIC, STATIC
    units = np.array([u for u, _ in DIRECTIONS], np.float64)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    direction = int(np.argmax(units @ (v / np.linalg.norm(v))))
    speed = int(np.argmin(np.abs(np.asarray(speeds, np.float64) - magnitude)))
    return direction, speed


def object_color(labels: Mapping[str, Any]) -> tuple[int, int, int]:
    """The RGB colour of the captioned first object, from ingest labels."""
    try:
        name = labels["objects"][0]["color"]
        return COLORS[name]
    except (KeyError, IndexError, TypeError):
        got = sorted(labels) if isinstance(labels, Mapping) else repr(labels)
        raise EvaluationError("motion-following needs synthetic labels with objects[0].color (one of "
                              f"{', '.join(COLORS)}); got keys {got}") from None


def estimate_motion(frames: np.ndarray, color: Sequence[int], tolerance: float = COLOR_TOLERANCE) -> MotionEstimate:
    """Track the object of `color` through a generated clip and classify its motion."""
    frames = np.asarray(frames)
    velocity, found = theil_sen_velocity(object_positions(frames, color, tolerance))
    direction, speed = classify_velocity(velocity, speeds_px(frames.shape[1], frames.shape[2]))
    return MotionEstimate(velocity, direction, speed, found)


def score_motion_following(videos: Sequence[np.ndarray], labels: Sequence[Mapping[str, Any]],
                           tolerance: float = COLOR_TOLERANCE) -> dict[str, Any]:
    """Direction, speed and joint accuracy of generated clips against their synthetic labels.

    videos: uint8 (T, H, W, 3) clips, generated at the labels' resolution or a multiple of it (speeds are
    compared at the video's own size). labels: the manifest's `labels` of each clip's prompt.
    Also returned: the mean velocity error (px per frame, over clips where the object was found), how many
    clips lost the object, chance levels, and the per-clip estimates.
    """
    if len(videos) != len(labels):
        raise ValueError(f"{len(videos)} videos but {len(labels)} label records")
    if not videos:
        raise EvaluationError("no clips to score motion-following on")
    hits_dir, hits_speed, hits_both, errors, lost, per_clip = [], [], [], [], 0, []
    for video, lab in zip(videos, labels):
        est = estimate_motion(video, object_color(lab), tolerance)
        want_dir, want_speed = int(lab["direction_index"]), int(lab["speed_index"])
        hits_dir.append(est.direction_index == want_dir)
        hits_speed.append(est.speed_index == want_speed)
        hits_both.append(hits_dir[-1] and hits_speed[-1])
        if est.velocity is None:
            lost += 1
        else:
            # the label's velocity is at the labelled size; the speed scale of the video says how to compare
            (ux, uy), _ = DIRECTIONS[want_dir]
            s = speeds_px(video.shape[1], video.shape[2])[want_speed]
            errors.append(float(np.hypot(est.velocity[0] - ux * s, est.velocity[1] - uy * s)))
        per_clip.append(asdict(est))
    return {
        "n": len(videos),
        "direction_accuracy": float(np.mean(hits_dir)),
        "speed_accuracy": float(np.mean(hits_speed)),
        "motion_accuracy": float(np.mean(hits_both)),
        "velocity_error": float(np.mean(errors)) if errors else None,
        "object_not_found": lost,
        "chance": {"direction": 1 / len(DIRECTIONS), "speed": 1 / len(SPEEDS),
                   "motion": 1 / (len(DIRECTIONS) * len(SPEEDS))},
        "per_clip": per_clip,
    }
