"""The embedded default dataset: deterministic moving-shapes clips whose captions state the motion.

Every clip is a pure function of (seed, split, index): the same settings give the same bytes on any
machine. One object (optionally a second, drawn behind it) moves in a straight line at a constant integer
velocity on a plain or textured static background, so block motion is exact and the ground truth is known.
Captions name colour, shape, speed and direction ("a red circle moves slowly up and to the left"), and the
labels keep everything an evaluation needs (direction, speed, velocity, per-frame centroids).

Geometry is defined at 64x64 and scaled with the clip size (speeds 1/2/3 px per frame at 64x64, 2/4/6 at
128x128, never below 1/2/3: `speeds_px`). Splits are disjoint: each split draws from its own seed stream, and a clip whose bytes already
occurred in any split is redrawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np

from dvdm.data.base import Clip, ClipSpec
from dvdm.errors import ConfigError

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLORS = {
    "red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 80, 230), "yellow": (235, 215, 40),
    "purple": (150, 60, 200), "cyan": (40, 200, 210), "orange": (245, 140, 30), "white": (245, 245, 245),
}
# (dx, dy) with y pointing down, and the words the caption uses
DIRECTIONS = (
    ((0, -1), "up"), ((0, 1), "down"), ((-1, 0), "to the left"), ((1, 0), "to the right"),
    ((-1, -1), "up and to the left"), ((1, -1), "up and to the right"),
    ((-1, 1), "down and to the left"), ((1, 1), "down and to the right"),
)
SPEEDS = (("slowly", 1), ("steadily", 2), ("quickly", 3))  # px per frame at 64x64
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def speeds_px(height: int, width: int) -> list[int]:
    """The px-per-frame speed of each SPEEDS entry at this clip size: 1/2/3 at 64x64, scaled with the smaller
    side (2/4/6 at 128x128) and rounded half up, but never below 1/2/3, so the three speeds stay distinct
    and non-zero at every size (at 32x32 a plain scaling would round "slowly" to 0 px: a clip whose
    caption says it moves would stand still)."""
    scale = min(height, width) / 64.0
    return [max(base, int(np.floor(base * scale + 0.5))) for _, base in SPEEDS]


def start_range(size: float, velocity: tuple[float, float], frames: int, height: int,
                width: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """((x_lo, x_hi), (y_lo, y_hi)): the top-left corners from which a `size` px object moving at `velocity`
    px per frame stays wholly inside the frame for `frames` frames (an empty range when none does)."""
    (vx, vy), n = velocity, frames - 1
    return ((max(0, -vx * n), width - size - max(0, vx * n)),
            (max(0, -vy * n), height - size - max(0, vy * n)))


def trajectory_inside(start: tuple[float, float], size: float, velocity: tuple[float, float], frames: int,
                      height: int, width: int) -> bool:
    """Whether an object with top-left corner `start` stays wholly inside the frame along its trajectory,
    as every captioned motion of this generator does."""
    (x_lo, x_hi), (y_lo, y_hi) = start_range(size, velocity, frames, height, width)
    return x_lo <= start[0] <= x_hi and y_lo <= start[1] <= y_hi


def indefinite_article(word: str) -> str:
    """The article a caption puts before a palette word: "an orange", "a red" (no colour here starts with a
    silent or a sounded-as-consonant letter, so the first letter decides)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def describe(color: str, shape: str, speed_index: int, direction_index: int) -> str:
    """The caption of one object's motion: "a red circle moves slowly up and to the left", "an orange square
    moves quickly down"."""
    return (f"{indefinite_article(color)} {color} {shape} moves {SPEEDS[speed_index][0]} "
            f"{DIRECTIONS[direction_index][1]}")


def _shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape centred in its box."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (xx - c) / (size / 2), (yy - c) / (size / 2)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":  # apex up
        return (v <= 0.9) & (v >= -0.95 + 2.0 * np.abs(u) * 0.95) & (np.abs(u) <= 0.95)
    if shape == "cross":
        return ((np.abs(u) <= 0.33) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.33) & (np.abs(u) <= 1.0))
    raise ValueError(shape)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth static colour texture: low-resolution noise upsampled bilinearly, muted."""
    gh, gw = max(2, h // 8), max(2, w // 8)
    base = rng.uniform(30, 120, (gh, gw, 3))
    ys = np.linspace(0, gh - 1, h)
    xs = np.linspace(0, gw - 1, w)
    y0 = np.floor(ys).astype(int).clip(0, gh - 2)
    x0 = np.floor(xs).astype(int).clip(0, gw - 2)
    fy = (ys - y0)[:, None, None]
    fx = (xs - x0)[None, :, None]
    a = base[y0][:, x0]
    b = base[y0][:, x0 + 1]
    c = base[y0 + 1][:, x0]
    d = base[y0 + 1][:, x0 + 1]
    img = a * (1 - fy) * (1 - fx) + b * (1 - fy) * fx + c * fy * (1 - fx) + d * fy * fx
    return np.rint(img).astype(np.uint8)


class SyntheticSource:
    """Moving shapes. Options: counts per split, seed, probabilities of a second object and of a textured
    background, object size and its jitter (in px at 64x64; each object's box is drawn uniformly within
    object_size +- size_jitter)."""

    name = "synthetic"

    def __init__(self, spec: ClipSpec, num_train: int = 256, num_val: int = 32, num_test: int = 32,
                 seed: int = 0, second_object_prob: float = 0.3, textured_background_prob: float = 0.5,
                 object_size: int = 12, size_jitter: int = 0):
        for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 0:
                raise ConfigError(f"synthetic: {key} must be >= 0, got {value}")
        for key, value in (("second_object_prob", second_object_prob),
                           ("textured_background_prob", textured_background_prob)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"synthetic: {key} must be within [0, 1], got {value}")
        self.spec = spec
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed
        self.second_object_prob = second_object_prob
        self.textured_background_prob = textured_background_prob
        self.scale = min(spec.height, spec.width) / 64.0
        if not 0 <= size_jitter < object_size:
            raise ConfigError(f"synthetic: size_jitter must be within [0, object_size), got {size_jitter}")
        self.object_px = max(4, int(round(object_size * self.scale)))
        self.jitter_px = min(int(round(size_jitter * self.scale)), self.object_px - 4)
        self.speeds = speeds_px(spec.height, spec.width)
        travel = self.speeds[-1] * (spec.frames - 1)
        if travel + self.object_px + self.jitter_px > min(spec.height, spec.width):
            raise ConfigError(
                f"synthetic: a {self.object_px + self.jitter_px}px object moving {travel}px over {spec.frames} "
                f"frames does not fit a {spec.height}x{spec.width} clip; use fewer frames or a larger size")

    @classmethod
    def options_help(cls) -> dict[str, str]:
        return {
            "num_train": "clips in the train split", "num_val": "clips in the val split",
            "num_test": "clips in the test split", "seed": "random seed (clips are a pure function of it)",
            "second_object_prob": "probability of a second moving object",
            "textured_background_prob": "probability of a textured (vs plain) static background",
            "object_size": "object size in px at 64x64 (scaled with the clip size)",
            "size_jitter": "each object's size is drawn within object_size +- this (px at 64x64)",
        }

    def __iter__(self) -> Iterator[Clip]:
        seen: set[str] = set()
        for split in ("train", "val", "test"):
            for index in range(self.counts[split]):
                attempt = 0
                while True:
                    clip = self.make_clip(split, index, attempt)
                    digest = hashlib.sha256(clip.frames.tobytes()).hexdigest()
                    if digest not in seen:
                        seen.add(digest)
                        break
                    attempt += 1
                yield clip

    # -- one clip -----------------------------------------------------------------------------------
    def _object(self, rng: np.random.Generator) -> dict:
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        d = int(rng.integers(len(DIRECTIONS)))
        s = int(rng.integers(len(SPEEDS)))
        speed_px = self.speeds[s]
        (ux, uy), words = DIRECTIONS[d]
        vx, vy = ux * speed_px, uy * speed_px
        size, (h, w), t = self.object_px, (self.spec.height, self.spec.width), self.spec.frames
        if self.jitter_px:  # drawn only when asked, so clips without jitter stay what they were
            size += int(rng.integers(-self.jitter_px, self.jitter_px + 1))
        # start so that the whole trajectory stays inside the frame
        (x_lo, x_hi), (y_lo, y_hi) = start_range(size, (vx, vy), t, h, w)
        x0, y0 = int(rng.integers(x_lo, x_hi + 1)), int(rng.integers(y_lo, y_hi + 1))
        return {"shape": shape, "color": color, "direction": words, "direction_index": d,
                "unit": [ux, uy], "speed": SPEEDS[s][0], "speed_index": s, "speed_px": speed_px,
                "velocity": [vx, vy], "start": [x0, y0], "size": size}

    def make_clip(self, split: str, index: int, attempt: int = 0) -> Clip:
        """The clip `index` of `split`, deterministically."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLIT_IDS[split], index, attempt]))
        h, w, t = self.spec.height, self.spec.width, self.spec.frames
        textured = bool(rng.random() < self.textured_background_prob)
        if textured:
            bg = _texture(rng, h, w)
        else:
            bg = np.empty((h, w, 3), np.uint8)
            bg[:] = rng.integers(10, 70, 3, dtype=np.uint8)
        objects = [self._object(rng)]
        if rng.random() < self.second_object_prob:
            second = self._object(rng)
            while second["color"] == objects[0]["color"]:
                second["color"] = list(COLORS)[rng.integers(len(COLORS))]
            objects.append(second)
        frames = np.repeat(bg[None], t, axis=0)
        for obj in reversed(objects):  # the first (captioned-first) object is drawn on top
            mask = _shape_mask(obj["shape"], obj["size"])
            color = np.array(COLORS[obj["color"]], np.uint8)
            traj = []
            for k in range(t):
                x = obj["start"][0] + obj["velocity"][0] * k
                y = obj["start"][1] + obj["velocity"][1] * k
                frames[k, y:y + obj["size"], x:x + obj["size"]][mask] = color
                traj.append([x + (obj["size"] - 1) / 2, y + (obj["size"] - 1) / 2])
            obj["trajectory"] = traj
        caption = " while ".join(describe(o["color"], o["shape"], o["speed_index"], o["direction_index"])
                                 for o in objects)
        clip_id = f"synthetic/{split}-{index:06d}"
        return Clip(
            id=clip_id, frames=frames, caption=caption, split=split, source=self.name,
            provenance={"generator": "dvdm.data.synthetic", "seed": self.seed, "split": split, "index": index,
                        "attempt": attempt, "size": [h, w], "frames": t},
            labels={"objects": objects, "background": "textured" if textured else "plain",
                    "direction_index": objects[0]["direction_index"], "speed_index": objects[0]["speed_index"],
                    "velocity": objects[0]["velocity"]},
        )
