"""The synthetic moving-shapes source: deterministic, disjoint splits, captions that match the motion."""

from __future__ import annotations

import numpy as np
import pytest

from dvdm.codec.decompose import DecomposeConfig, decompose
from dvdm.data.base import ClipSpec
from dvdm.data.synthetic import COLORS, DIRECTIONS, SPEEDS, SyntheticSource
from dvdm.errors import ConfigError


def make(size: int = 64, **kw) -> SyntheticSource:
    opts = {"num_train": 12, "num_val": 4, "num_test": 4, "seed": 7} | kw
    return SyntheticSource(ClipSpec(frames=16, height=size, width=size), **opts)


def test_same_seed_same_bytes_other_seed_other_bytes():
    a = [c.frames for c in make()]
    b = [c.frames for c in make()]
    c = [c.frames for c in make(seed=8)]
    assert all((x == y).all() for x, y in zip(a, b))
    assert not all((x == y).all() for x, y in zip(a, c))


def test_splits_are_disjoint_and_sized():
    clips = list(make(num_train=40, num_val=10, num_test=10))
    by_split = {s: {c.frames.tobytes() for c in clips if c.split == s} for s in ("train", "val", "test")}
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [40, 10, 10]
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"])
    assert len({c.id for c in clips}) == 60


@pytest.mark.parametrize("size", [64, 128])
def test_caption_matches_ground_truth_motion(size):
    """The caption's words, the labels and the pixels all agree: the object's centroid moves by the
    labelled velocity every frame, in the captioned direction at the captioned speed."""
    words = {w: (ux, uy) for (ux, uy), w in DIRECTIONS}
    for clip in make(size=size, second_object_prob=0.0):
        obj = clip.labels["objects"][0]
        article = "an" if obj["color"][0] in "aeiou" else "a"  # "an orange square"
        assert clip.caption == f"{article} {obj['color']} {obj['shape']} moves {obj['speed']} {obj['direction']}"
        ux, uy = words[obj["direction"]]
        speed = dict(SPEEDS)[obj["speed"]] * size // 64
        assert obj["velocity"] == [ux * speed, uy * speed]
        # measure the motion from pixels: colour mask centroid per frame
        colour = np.array(COLORS[obj["color"]])
        cents = []
        for f in clip.frames:
            ys, xs = np.nonzero((f == colour).all(-1))
            cents.append((xs.mean(), ys.mean()))
        steps = np.diff(np.array(cents), axis=0)
        np.testing.assert_allclose(steps, np.tile(obj["velocity"], (15, 1)), atol=1e-6)


def test_block_motion_of_synthetic_clips_is_exact_and_matches_labels():
    for clip in make(second_object_prob=0.0, textured_background_prob=1.0):
        d = decompose(clip.frames, DecomposeConfig(block=8, search=8))
        np.testing.assert_array_equal(d.reconstruct(), clip.frames)
        vx, vy = clip.labels["velocity"]
        moving = d.mv[(d.mv != 0).any(-1)]
        if vx or vy:
            # the most common non-zero vector is the object's motion, pointing back
            vals, counts = np.unique(moving, axis=0, return_counts=True)
            assert tuple(vals[counts.argmax()]) == (-vx, -vy)


def test_second_object_and_textures_appear():
    clips = list(make(num_train=40, second_object_prob=0.5, textured_background_prob=0.5))
    assert any(len(c.labels["objects"]) == 2 for c in clips)
    assert any(" while " in c.caption for c in clips)
    assert {c.labels["background"] for c in clips} == {"plain", "textured"}


def test_bad_options():
    with pytest.raises(ConfigError, match="num_train"):
        make(num_train=-1)
    with pytest.raises(ConfigError, match="second_object_prob"):
        make(second_object_prob=2.0)
    with pytest.raises(ConfigError, match="does not fit"):
        SyntheticSource(ClipSpec(frames=64, height=32, width=32))
