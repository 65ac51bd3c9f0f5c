"""Pictures of a codec decomposition: motion fields, residuals, and whole-clip summaries (PNG / MP4).

Drawing convention: our vectors point *backwards* (`pred[y, x] = prev[y + dy, x + dx]`, see
`compensate.py`), so a block whose content moved right/down has a negative vector. Every picture here
shows the intuitive direction instead, **where the content moved to**, i.e. the arrow (or the HSV hue) is
`-mv`. The figures say so in their captions.

Figures are drawn with Matplotlib's Agg canvas (`matplotlib.figure.Figure`, no pyplot state, no display)
and written as PNG with `dvdm.video.writer.write_png`; videos go through `write_mp4`. Both are atomic: a
failure never leaves a partial file at the target path.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from dvdm.codec.compensate import grid_shape
from dvdm.video.writer import write_mp4, write_png

ARROWS_CAPTION = "arrows: where the content moved to (= -mv); dots: no motion"
HOLES_CAPTION = "red boxes: intra blocks (no vector)"
RESIDUAL_GAIN = 4
"""Residual magnitude amplification in `inspect_mp4` (|r| * 4, clipped to 255)."""


# ---------------------------------------------------------------------------------------------- checks

def _check_image(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"{what} must be uint8 (H, W, 3), got {img.dtype} {img.shape}")
    return img


def _check_mv(mv: np.ndarray, shape: tuple[int, ...], what: str = "mv") -> np.ndarray:
    mv = np.asarray(mv)
    if mv.shape != shape or mv.dtype.kind not in "iu":
        raise ValueError(f"{what} must be an integer array of shape {shape}, got {mv.dtype} {mv.shape}")
    return mv


def _check_clip(frames: np.ndarray, mv: np.ndarray, residual: np.ndarray, block: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 2, got {frames.dtype} {frames.shape}")
    if not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    t, h, w, _ = frames.shape
    mv = _check_mv(mv, (t - 1, *grid_shape(h, w, block), 2))
    residual = np.asarray(residual)
    if residual.shape != (t - 1, h, w, 3):
        raise ValueError(f"residual must have shape {(t - 1, h, w, 3)}, got {residual.shape}")
    return frames, mv, residual


# ---------------------------------------------------------------------------------------------- drawing

def _render(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3])


def _arrow_gain(mv: np.ndarray, block: int) -> float:
    """Arrows are stretched (never shrunk) so that a typical moving block's arrow (90th percentile of the
    non-zero lengths, robust to a few wild vectors) spans ~0.9 block; 1-px moves stay visible."""
    lengths = np.hypot(mv[..., 0].astype(np.float32), mv[..., 1].astype(np.float32))
    lengths = lengths[lengths > 0]
    if not lengths.size:
        return 1.0
    return max(1.0, 0.9 * block / float(np.percentile(lengths, 90)))


def _draw_field(ax, mv: np.ndarray, block: int, h: int, w: int, valid: np.ndarray | None, gain: float) -> None:
    gh, gw = mv.shape[:2]
    cy = np.minimum(np.arange(gh) * block + block / 2, h - 0.5) - 0.5
    cx = np.minimum(np.arange(gw) * block + block / 2, w - 0.5) - 0.5
    xx, yy = np.meshgrid(cx, cy)
    u = -mv[..., 0].astype(float)   # where the content moved to (image x grows right)
    v = -mv[..., 1].astype(float)   # image y grows down; angles="xy" on the inverted axis keeps that
    still = (mv[..., 0] == 0) & (mv[..., 1] == 0)
    moving = ~still
    if moving.any():
        ax.quiver(xx[moving], yy[moving], u[moving] * gain, v[moving] * gain, angles="xy", scale_units="xy",
                  scale=1, color="yellow", edgecolor="black", linewidth=0.5, width=0.006, headwidth=4)
    if still.any():
        ax.scatter(xx[still], yy[still], s=4, c="cyan", marker="o", linewidths=0)
    if valid is not None:
        for by, bx in zip(*np.nonzero(~valid)):
            ax.add_patch(Rectangle((bx * block - 0.5, by * block - 0.5), min(block, w - bx * block),
                                   min(block, h - by * block), fill=False, edgecolor="red", linewidth=1.0))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def _save_with_caption(fig: Figure, path: str | os.PathLike[str], caption: str, valid: np.ndarray | None,
                       title: str) -> None:
    """Caption (with the intra-hole legend when a validity mask is drawn), title, then an atomic PNG."""
    if valid is not None:
        caption += f"; {HOLES_CAPTION}"
    fig.supxlabel(caption, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    write_png(path, _render(fig))


def _residual_magnitude(residual: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(residual, np.float32)).mean(axis=-1)


def _colour_limit(mag: np.ndarray) -> float:
    """Top of the residual colour scale: the 99.5th percentile (a few outliers would wash the map out)."""
    return max(1.0, float(np.percentile(mag, 99.5))) if mag.size else 1.0


def _panel_size(h: int, w: int, width_in: float = 3.2) -> tuple[float, float]:
    return width_in, max(1.2, width_in * h / w)


# ---------------------------------------------------------------------------------------------- PNGs

def motion_field_png(path: str | os.PathLike[str], first_frame: np.ndarray, frame: np.ndarray, mv: np.ndarray,
                     valid: np.ndarray | None = None, *, block: int, title: str = "") -> None:
    """Two panels: the reference frame (`first_frame`, the one the vectors point into) and `frame` with
    one arrow per block (`-mv`, scaled up for visibility, gain in the caption), dots for zero vectors and
    red outlines for blocks with `valid=False`. mv: (gh, gw, 2) integer; valid: (gh, gw) bool or None."""
    first_frame = _check_image(first_frame, "first_frame")
    frame = _check_image(frame, "frame")
    if first_frame.shape != frame.shape:
        raise ValueError(f"first_frame {first_frame.shape} and frame {frame.shape} differ in shape")
    if not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    h, w, _ = frame.shape
    gh, gw = grid_shape(h, w, block)
    mv = _check_mv(mv, (gh, gw, 2))
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != (gh, gw):
            raise ValueError(f"valid must have shape {(gh, gw)}, got {valid.shape}")
    gain = _arrow_gain(mv, block)
    pw, ph = _panel_size(h, w)
    fig = Figure(figsize=(2 * pw, ph + 0.9), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    axes[0].imshow(first_frame, interpolation="nearest")
    axes[0].set_title("reference (previous) frame", fontsize=8)
    axes[1].imshow(frame, interpolation="nearest")
    _draw_field(axes[1], mv, block, h, w, valid, gain)
    axes[1].set_title(f"frame + motion, block {block}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    _save_with_caption(fig, path, f"{ARROWS_CAPTION}; arrows x{gain:.1f}", valid, title)


def residual_png(path: str | os.PathLike[str], residual: np.ndarray, title: str = "") -> None:
    """Heat map of the mean |residual| over the colour channels, with a colour bar. residual: (H, W, 3)."""
    residual = np.asarray(residual)
    if residual.ndim != 3 or residual.shape[-1] != 3:
        raise ValueError(f"residual must be (H, W, 3), got {residual.shape}")
    mag = _residual_magnitude(residual)
    h, w = mag.shape
    pw, ph = _panel_size(h, w, 4.0)
    fig = Figure(figsize=(pw + 1.0, ph + 0.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(mag, cmap="magma", vmin=0, vmax=_colour_limit(mag), interpolation="nearest")
    fig.colorbar(im, ax=ax, label="mean |residual| (0-255 scale)", extend="max")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"residual, mean |r| = {mag.mean():.2f}, max {mag.max():.0f}", fontsize=9)
    write_png(path, _render(fig))


def _default_indices(t: int, count: int = 4) -> list[int]:
    """About `count` evenly spaced P-frame indices in 1..t-1."""
    return sorted({int(round(x)) for x in np.linspace(1, t - 1, min(count, t - 1))})


def inspect_png(path: str | os.PathLike[str], frames: np.ndarray, mv: np.ndarray, residual: np.ndarray, *,
                block: int, frame_indices: list[int] | None = None, valid: np.ndarray | None = None,
                title: str = "") -> None:
    """A grid summarising a clip: one row per P-frame (default ~4 evenly spaced), columns
    [frame t, motion field of t over frame t, residual magnitude of t].

    frames (T, H, W, 3) uint8; mv (T-1, gh, gw, 2), mv[t-1] predicts frame t; residual (T-1, H, W, 3);
    valid optional (T-1, gh, gw) bool to outline intra blocks.
    """
    frames, mv, residual = _check_clip(frames, mv, residual, block)
    t, h, w, _ = frames.shape
    idx = _default_indices(t) if frame_indices is None else [int(i) for i in frame_indices]
    if not idx or any(not 1 <= i < t for i in idx):
        raise ValueError(f"frame_indices must be P-frame indices in 1..{t - 1}, got {frame_indices}")
    if valid is not None:
        valid = np.asarray(valid, bool)
        if valid.shape != mv.shape[:3]:
            raise ValueError(f"valid must have shape {mv.shape[:3]}, got {valid.shape}")
    gain = _arrow_gain(mv[[i - 1 for i in idx]], block)
    mags = _residual_magnitude(residual[[i - 1 for i in idx]])
    vmax = _colour_limit(mags)
    pw, ph = _panel_size(h, w, 2.6)
    fig = Figure(figsize=(3 * pw + 0.8, len(idx) * (ph + 0.3) + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(len(idx), 3, squeeze=False)
    im = None
    for row, i in enumerate(idx):
        a0, a1, a2 = axes[row]
        a0.imshow(frames[i], interpolation="nearest")
        a0.set_title(f"frame {i}", fontsize=8)
        a1.imshow(frames[i], interpolation="nearest")
        _draw_field(a1, mv[i - 1], block, h, w, None if valid is None else valid[i - 1], gain)
        a1.set_title(f"motion {i - 1}->{i}", fontsize=8)
        im = a2.imshow(mags[row], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
        a2.set_title(f"|residual| {i}, mean {mags[row].mean():.2f}", fontsize=8)
        for ax in (a0, a1, a2):
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.6, extend="max", label="mean |residual|")
    _save_with_caption(fig, path, f"{ARROWS_CAPTION}; arrows x{gain:.1f}; block {block}", valid, title)


# ---------------------------------------------------------------------------------------------- MP4

def motion_to_rgb(mv: np.ndarray, block: int, height: int, width: int, max_motion: float) -> np.ndarray:
    """HSV colour coding of one block field, upsampled to the frame: hue = direction the content moved
    (-mv; red = right, then counter-clockwise on screen), value = |mv| / max_motion (clipped), full saturation.
    Zero motion is black. Returns (height, width, 3) uint8."""
    u = -mv[..., 0].astype(np.float32)
    v = -mv[..., 1].astype(np.float32)
    mag = np.hypot(u, v)
    hue = (np.arctan2(-v, u) / (2 * np.pi)) % 1.0          # -v: screen y grows down, angles counter-clockwise
    val = np.clip(mag / max(float(max_motion), 1e-6), 0, 1)
    rgb = hsv_to_rgb(np.stack([hue, np.ones_like(hue), val], axis=-1))
    rgb = (rgb * 255 + 0.5).astype(np.uint8)
    return rgb.repeat(block, 0).repeat(block, 1)[:height, :width]


def inspect_mp4(path: str | os.PathLike[str], frames: np.ndarray, mv: np.ndarray, residual: np.ndarray, *,
                block: int, fps: float = 8, max_motion: float | None = None) -> None:
    """A video of T frames, three panels side by side: the frame, its HSV motion field (see
    `motion_to_rgb`; normalised by `max_motion`, e.g. the search range; default: the 99th percentile
    of the clip's non-zero vector lengths, so one wild vector does not darken everything) and the
    residual magnitude (mean |r| over channels * 4, clipped, gray). Frame 0 (the I-frame) has no motion
    or residual: black panels. Written with `dvdm.video.writer.write_mp4` (H.264, T frames at `fps`)."""
    frames, mv, residual = _check_clip(frames, mv, residual, block)
    t, h, w, _ = frames.shape
    if max_motion is None:
        lengths = np.hypot(mv[..., 0].astype(np.float32), mv[..., 1].astype(np.float32))
        lengths = lengths[lengths > 0]
        max_motion = max(float(np.percentile(lengths, 99)), 1.0) if lengths.size else 1.0
    elif not max_motion > 0:
        raise ValueError(f"max_motion must be positive, got {max_motion}")
    out = np.zeros((t, h, 3 * w, 3), np.uint8)
    out[:, :, :w] = frames
    for i in range(1, t):
        out[i, :, w:2 * w] = motion_to_rgb(mv[i - 1], block, h, w, max_motion)
        mag = np.clip(_residual_magnitude(residual[i - 1]) * RESIDUAL_GAIN, 0, 255).astype(np.uint8)
        out[i, :, 2 * w:] = mag[..., None]
    write_mp4(path, out, fps=fps)
