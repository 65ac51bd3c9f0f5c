"""The prompt-swap test: does the model move the *same* first frame the way *each* prompt asks?

Sampling held-out clips with their own captions cannot tell a model that reads the prompt from one that
guesses motion from the picture. Here every first frame is generated once per prompt "a <colour> <shape>
moves <speed> <direction>" (8 directions x 3 speeds, colour and shape those of the frame's object), and the
motion of the generated object is measured from the pixels (`motion_following.estimate_motion`). Reported:
direction accuracy (chance 1/8), speed accuracy (chance 1/3), the mean speed error in px per frame, how
often the object stands still, and the confusion matrix of asked vs measured direction (a 9th column for
"static / lost").

Scored prompts are those whose asked trajectory keeps the object wholly inside the frame, as every caption
of the generator does (`dvdm.data.synthetic.trajectory_inside`): a held-out object near the right edge
asked to move "quickly right" would have to leave the frame, a motion no training caption describes and one
the pixel tracker cannot time (rendered exactly, such exits score 100 % direction but ~80 % speed, since
the visible part's median slows as it leaves). Those prompts are still generated (the grids show them) and
reported apart as `all_prompts`. PIL-drawn frames are centred so that every prompt stays inside.

First frames come from two places: held-out clips of the synthetic split (their object's labels give colour
and shape), and frames drawn here with PIL (`drawn_first_frames`): anti-aliased shapes of other sizes at
sub-pixel positions near the centre, on plain backgrounds and on textures the generator never makes
(blurred noise, stripes, gradients), so a model that only memorised the generator's pixels fails them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dvdm.data.synthetic import COLORS, DIRECTIONS, SHAPES, SPEEDS, describe, speeds_px, trajectory_inside
from dvdm.evaluate.motion_following import STATIC, estimate_motion
from dvdm.utils.progress import Progress

Generate = Callable[[np.ndarray, list[str], list[int]], np.ndarray]
"""(first frames uint8 (B, H, W, 3), prompts, seeds) -> videos uint8 (B, T, H, W, 3)."""


@dataclass(frozen=True)
class SwapPrompt:
    text: str
    direction_index: int
    speed_index: int


@dataclass(frozen=True)
class FirstFrame:
    """A first frame and the object in it that the prompts will name."""

    image: np.ndarray          # uint8 (H, W, 3)
    color: str
    shape: str
    origin: str                # "held-out <clip id>" or "drawn <background>"
    box: tuple[float, float, float] | None = None  # the object's top-left x, y and size in px (None: unknown)

    def inside(self, prompt: SwapPrompt, frames: int) -> bool:
        """Whether the asked motion keeps the object inside the frame (True when the box is unknown)."""
        if self.box is None:
            return True
        h, w = self.image.shape[:2]
        (ux, uy), _ = DIRECTIONS[prompt.direction_index]
        s = speeds_px(h, w)[prompt.speed_index]
        x, y, size = self.box
        return trajectory_inside((x, y), size, (ux * s, uy * s), frames, h, w)


def swap_prompts(color: str, shape: str, speeds: Sequence[int] | None = None) -> list[SwapPrompt]:
    """Every direction at every speed (or the given speed indices), worded as the training captions are."""
    speed_indices = range(len(SPEEDS)) if speeds is None else speeds
    return [SwapPrompt(describe(color, shape, s, d), d, s) for s in speed_indices for d in range(len(DIRECTIONS))]


def held_out_first_frames(records: Sequence[dict], clips: Sequence[np.ndarray], limit: int) -> list[FirstFrame]:
    """First frames of held-out synthetic clips (those whose labels name the object), at most `limit`."""
    out = []
    for record, clip in zip(records, clips):
        objects = (record.get("labels") or {}).get("objects") or []
        if objects and objects[0].get("color") in COLORS and objects[0].get("shape") in SHAPES:
            o = objects[0]
            box = (float(o["start"][0]), float(o["start"][1]), float(o["size"])) if "start" in o else None
            out.append(FirstFrame(np.asarray(clip[0]), o["color"], o["shape"], f"held-out {record.get('id', '?')}",
                                  box))
        if len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------------------------- frames drawn with PIL
def _background(rng: np.random.Generator, kind: str, h: int, w: int) -> np.ndarray:
    """A muted background (RGB 10..120, far from the palette) the synthetic generator never draws."""
    from PIL import Image, ImageFilter

    if kind == "plain":
        img = np.empty((h, w, 3), np.uint8)
        img[:] = rng.integers(10, 70, 3)
        return img
    if kind == "noise":  # blurred white noise: fine-grained, unlike the generator's 8 px bilinear grid
        noise = Image.fromarray(rng.integers(20, 120, (h, w, 3), dtype=np.uint8))
        return np.asarray(noise.filter(ImageFilter.GaussianBlur(1.2)))
    if kind == "stripes":
        yy, xx = np.mgrid[0:h, 0:w]
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 14)
        phase = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        a, b = rng.integers(15, 60, 3), rng.integers(60, 115, 3)
        return (a + (b - a) * (phase[..., None] * 0.5 + 0.5)).astype(np.uint8)
    if kind == "gradient":
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        c0, c1, c2 = (rng.integers(10, 115, 3) for _ in range(3))
        return np.clip(c0 + (c1 - c0) * xx[..., None] + (c2 - c0) * yy[..., None] * 0.7, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown background {kind!r}")


BACKGROUNDS = ("plain", "noise", "stripes", "gradient")


def _draw_shape(draw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "cross":
        t = r / 3
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def drawn_first_frames(n: int, height: int, width: int, frames: int, seed: int = 0,
                       backgrounds: Sequence[str] = BACKGROUNDS) -> list[FirstFrame]:
    """`n` first frames drawn with PIL: one palette-coloured shape, anti-aliased (drawn at 4x, then reduced
    with a box filter), 9-15 px at 64x64 (the generator: 12), centred where the quickest asked motion over
    `frames` frames stays inside the frame in every direction (or as close to the centre as the size allows),
    on the backgrounds in turn."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    scale = min(height, width) / 64.0
    travel = speeds_px(height, width)[-1] * (frames - 1)
    out = []
    for i in range(n):
        kind = backgrounds[i % len(backgrounds)]
        bg = _background(rng, kind, height, width)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
        r = rng.uniform(4.5, 7.5) * scale
        # the centre's range, less the half-pixel jitter below, so every asked trajectory stays inside
        span_x = max(0.0, (width - 2 * travel - 2 * r) / 2 - 0.5)
        span_y = max(0.0, (height - 2 * travel - 2 * r) / 2 - 0.5)
        cx = width / 2 + rng.uniform(-span_x, span_x) + rng.uniform(-0.5, 0.5)
        cy = height / 2 + rng.uniform(-span_y, span_y) + rng.uniform(-0.5, 0.5)
        big = Image.fromarray(bg).resize((width * 4, height * 4), Image.NEAREST)
        _draw_shape(ImageDraw.Draw(big), shape, cx * 4, cy * 4, r * 4, COLORS[color])
        image = np.asarray(big.resize((width, height), Image.BOX))
        out.append(FirstFrame(image, color, shape, f"drawn {kind}", (cx - r, cy - r, 2 * r)))
    return out


def first_frame_sets(records: Sequence[dict], clips: Sequence[np.ndarray], held_out: int, drawn: int,
                     height: int, width: int, frames: int, seed: int = 0) -> dict[str, list[FirstFrame]]:
    """The test's two sets: `held_out` first frames of labelled held-out clips, `drawn` PIL-drawn ones."""
    return {"held_out": held_out_first_frames(records, clips, held_out),
            "drawn": drawn_first_frames(drawn, height, width, frames, seed=seed)}


# ---------------------------------------------------------------------------------- the test
def run_prompt_swap(generate: Generate, first_frames: Sequence[FirstFrame], seed: int = 0, batch_size: int = 8,
                    speeds: Sequence[int] | None = None, label: str = "prompt swap") -> dict[str, Any]:
    """Generate every first frame with every prompt and score the measured motion against the asked one.

    Returns the scores of the prompts that keep the object inside the frame (`n` of them; `n_out_of_frame`
    others, scored apart with them in `all_prompts`), the confusion matrix of those (rows: asked direction;
    columns: measured direction, then static/lost) and `videos[i][j]`: the video of first frame i with prompt j
    (for grids). `label` names its progress (`dvdm.utils.progress`).
    """
    if not first_frames:
        raise ValueError("the prompt-swap test needs at least one first frame")
    jobs = [(i, p) for i, f in enumerate(first_frames) for p in swap_prompts(f.color, f.shape, speeds)]
    videos: list[np.ndarray] = []
    with Progress(label, len(jobs), "clip") as progress:
        for b in range(0, len(jobs), batch_size):
            chunk = jobs[b:b + batch_size]
            images = np.stack([first_frames[i].image for i, _ in chunk])
            out = generate(images, [p.text for _, p in chunk], [seed + b + k for k in range(len(chunk))])
            videos.extend(np.asarray(v) for v in out)
            progress.update(len(videos))
    n_dir = len(DIRECTIONS)
    confusion = np.zeros((n_dir, n_dir + 1), np.int64)
    per_sample = []
    for (i, prompt), video in zip(jobs, videos):
        est = estimate_motion(video, COLORS[first_frames[i].color])
        inside = first_frames[i].inside(prompt, video.shape[0])
        if inside:
            confusion[prompt.direction_index, n_dir if est.direction_index == STATIC else est.direction_index] += 1
        asked = speeds_px(video.shape[1], video.shape[2])[prompt.speed_index]
        measured = 0.0 if est.velocity is None else float(np.abs(est.velocity).max())
        per_sample.append({"frame": i, "prompt": prompt.text, "direction_index": prompt.direction_index,
                           "speed_index": prompt.speed_index, "inside": inside,
                           "measured_direction": est.direction_index, "measured_speed": est.speed_index,
                           "velocity": est.velocity, "speed_error": abs(measured - asked)})
    scored = [s for s in per_sample if s["inside"]]
    if not scored:
        raise ValueError("no prompt keeps the object inside the frame: nothing to score")
    per = len(jobs) // len(first_frames)  # every frame gets the same prompt list (colour and shape aside)
    per_frame = [videos[k * per:(k + 1) * per] for k in range(len(first_frames))]
    return {
        **_scores(scored), "n_first_frames": len(first_frames), "prompts_per_frame": per,
        "n_out_of_frame": len(per_sample) - len(scored), "all_prompts": _scores(per_sample),
        "chance": {"direction": 1 / n_dir, "speed": 1 / len(SPEEDS)},
        "confusion": confusion.tolist(), "per_sample": per_sample, "videos": per_frame,
        "prompts": [p for _, p in jobs[:per]],
    }


def _scores(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Direction and speed accuracy, mean speed error (px/frame) and static fraction of scored samples."""
    return {"n": len(samples),
            "direction_accuracy": float(np.mean([s["measured_direction"] == s["direction_index"] for s in samples])),
            "speed_accuracy": float(np.mean([s["measured_speed"] == s["speed_index"] for s in samples])),
            "speed_error": float(np.mean([s["speed_error"] for s in samples])),
            "static_fraction": float(np.mean([s["measured_direction"] == STATIC for s in samples]))}


def swap_grid(result: dict[str, Any], first_frames: Sequence[FirstFrame], columns: int = 3,
              speed_index: int | None = None, gap: int = 2) -> np.ndarray:
    """One video: a row per prompt (all prompts, or those at `speed_index`), a column per first frame (the
    first `columns`), each row labelled with its direction and speed words."""
    from PIL import Image, ImageDraw

    prompts: list[SwapPrompt] = result["prompts"]
    rows = [j for j, p in enumerate(prompts) if speed_index is None or p.speed_index == speed_index]
    cols = list(range(min(columns, len(first_frames))))
    sample = result["videos"][0][0]
    t, h, w, _ = sample.shape
    label_w = 150
    height = len(rows) * (h + gap) - gap
    width = label_w + len(cols) * (w + gap)
    grid = np.full((t, height, width, 3), 255, np.uint8)
    labels = Image.new("RGB", (label_w, height), (255, 255, 255))
    draw = ImageDraw.Draw(labels)
    for r, j in enumerate(rows):
        y = r * (h + gap)
        words = f"{SPEEDS[prompts[j].speed_index][0]}\n{DIRECTIONS[prompts[j].direction_index][1]}"
        draw.multiline_text((4, y + h // 2 - 12), words, fill=(0, 0, 0))
        for c, i in enumerate(cols):
            x = label_w + c * (w + gap)
            grid[:, y:y + h, x:x + w] = result["videos"][i][j]
    grid[:, :, :label_w] = np.asarray(labels)[None]
    return grid


def plot_confusion(path, confusion: Sequence[Sequence[int]], title: str) -> None:
    """Asked direction (rows) vs measured direction (columns, last = static/lost), as a PNG heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.asarray(confusion, np.float64)
    frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    short = ["up", "down", "left", "right", "up-left", "up-right", "down-left", "down-right"]
    fig, ax = plt.subplots(figsize=(6.2, 5), dpi=100)
    ax.imshow(frac, vmin=0, vmax=1, cmap="Blues")
    for (r, c), v in np.ndenumerate(m):
        if v:
            ax.text(c, r, int(v), ha="center", va="center", fontsize=7,
                    color="white" if frac[r, c] > 0.5 else "black")
    ax.set_xticks(range(len(short) + 1), short + ["static"], rotation=45, ha="right")
    ax.set_yticks(range(len(short)), short)
    ax.set_xlabel("measured direction")
    ax.set_ylabel("asked direction")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
