"""Write clips as browser-playable MP4, looping GIF, PNG or a folder of PNG frames, always atomically.

Each writer goes through `atomic_path`/`atomic_dir`, so a crash or a bad frame never leaves a half-written
output where a reader (or a browser) could pick it up.
"""

from __future__ import annotations

import math
import numbers
import os
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc
from PIL import Image

from dvdm.utils.atomic import atomic_dir, atomic_path


def _check_frames(frames: np.ndarray, what: str = "frames") -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (T, H, W, 3), got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ValueError(f"{what} must be uint8 (T, H, W, 3) with T, H, W >= 1, got shape {frames.shape}")
    return frames


def _check_fps(fps: float) -> Fraction:
    if not (isinstance(fps, numbers.Real) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    # 29.97... becomes 30000/1001, 7.5 becomes 15/2: exact rational rates for the container time base.
    return Fraction(fps).limit_denominator(1001)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """yuv420p stores chroma per 2x2 block, so libx264 needs even sizes: repeat the last row/column.

    The written video is then up to one pixel taller/wider than `frames`; the extra row/column is a copy
    of its neighbour, so cropping it off on read gives back the original framing.
    """
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def write_mp4(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 8.0, crf: int = 18) -> None:
    """H.264 (libx264, yuv420p, BT.709, +faststart) MP4 that every browser plays inline.

    `crf` is x264's constant-quality knob (0 lossless .. 51 worst; 18 is visually near-lossless).
    Odd heights/widths are padded to even by edge replication (see `_pad_even`).
    """
    frames = _pad_even(_check_frames(frames))
    if not (isinstance(crf, numbers.Integral) and 0 <= crf <= 51):
        raise ValueError(f"crf must be an integer in 0..51, got {crf!r}")
    rate = _check_fps(fps)
    with atomic_path(path) as tmp:
        # faststart moves the index (moov) before the data so playback starts before the download ends.
        with av.open(str(tmp), "w", format="mp4", container_options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(int(crf))}
            # Convert with BT.709 and say so in the stream: browsers assume 709 for untagged video, while
            # FFmpeg would otherwise convert with 601, shifting hues slightly on playback.
            ctx = stream.codec_context
            ctx.colorspace, ctx.color_range = Colorspace.ITU709, ColorRange.MPEG
            ctx.color_primaries, ctx.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                    format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG,
                    dst_color_trc=ColorTrc.BT709, dst_color_primaries=ColorPrimaries.BT709)
                frame.pts, frame.time_base = i, 1 / rate
                container.mux(stream.encode(frame))
            container.mux(stream.encode())


def _to_pal8(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Quantise one RGB frame to at most 256 colours (its own palette); exact when it has <= 256."""
    pil = Image.fromarray(image).quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette = np.zeros((256, 3), np.uint8)
    rgb = np.frombuffer(bytes(pil.getpalette() or []), np.uint8)[: 256 * 3].reshape(-1, 3)
    palette[: len(rgb)] = rgb
    argb = np.concatenate([np.full((256, 1), 255, np.uint8), palette], axis=1)  # PyAV wants ARGB
    return np.asarray(pil), argb


def write_gif(path: str | os.PathLike[str], frames: np.ndarray, fps: float = 8.0) -> None:
    """Animated GIF that loops forever, one palette per frame.

    Encoded with FFmpeg's GIF encoder rather than Pillow's `save_all`, because Pillow silently merges
    identical consecutive frames (a still segment would read back with fewer frames). GIF delays are in
    1/100 s, so fps values that do not divide 100 are approximated frame by frame.
    """
    frames = _check_frames(frames)
    rate = _check_fps(fps)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="gif", container_options={"loop": "0"}) as container:
            stream = container.add_stream("gif", rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "pal8"
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(_to_pal8(image), format="pal8")
                frame.pts, frame.time_base = i, 1 / rate
                container.mux(stream.encode(frame))
            container.mux(stream.encode())


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """One uint8 RGB (H, W, 3) or grayscale (H, W) image as PNG."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"image must be uint8 (H, W, 3) or (H, W), got {image.dtype} {image.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_frames(directory: str | os.PathLike[str], frames: np.ndarray) -> None:
    """A frame folder 000.png, 001.png, ... (more digits past 1000 frames) that `read_video` reads back.

    The folder is built beside the target and swapped in whole, so an existing folder is replaced
    completely (no stale frames from a longer earlier clip).
    """
    frames = _check_frames(frames)
    digits = max(3, len(str(len(frames) - 1)))
    with atomic_dir(directory) as tmp:
        for i, image in enumerate(frames):
            Image.fromarray(image).save(tmp / f"{i:0{digits}d}.png", format="PNG")
