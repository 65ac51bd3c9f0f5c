"""Read video files (via PyAV) and frame folders (via Pillow) into uint8 RGB arrays.

Everything that goes wrong because of the input (missing, empty, corrupt, truncated, mixed frame sizes)
becomes one `VideoError` line naming the file; raw av/PIL exceptions never escape for bad input.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from dvdm.errors import ClipTooShortError, VideoError

SUPPORTED_VIDEO_EXTENSIONS: tuple[str, ...] = (".avi", ".gif", ".mkv", ".mov", ".mp4", ".webm")
SUPPORTED_IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png")

# Pillow raises all of these for unreadable or damaged images (SyntaxError comes from some plugins).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# PyAV's own errors; FFmpegError derives from Exception only, so OSError is listed for the file layer.
_AV_ERRORS = (av.FFmpegError, OSError)

# Pillow modes mapped to the FFmpeg pix_fmt names used for containers, so VideoInfo reads the same.
_PIL_PIX_FMT = {"L": "gray", "LA": "ya8", "P": "pal8", "PA": "pal8", "RGB": "rgb24", "RGBA": "rgba",
                "I;16": "gray16", "I": "gray32", "1": "monob", "CMYK": "cmyk", "YCbCr": "yuv444p"}


@dataclass(frozen=True)
class VideoInfo:
    """What a video file or frame folder holds.

    `frames` counts the frames in the source, even when a read asked for fewer (`start`/`max_frames`).
    Frame folders have `container="frames"`, `codec` from the first image ("png", "jpeg", "bmp"), and
    `fps` 0.0 unless the caller supplied one (images carry no frame rate).
    """

    path: str
    frames: int
    height: int
    width: int
    fps: float
    codec: str
    container: str
    pix_fmt: str


@dataclass
class Video:
    """Decoded frames plus the source's info."""

    frames: np.ndarray  # uint8 (T, H, W, 3), RGB
    info: VideoInfo


def is_video_path(path: str | os.PathLike[str]) -> bool:
    """True when the extension is a video container we read (frame folders are not "video paths")."""
    return Path(path).suffix.lower() in SUPPORTED_VIDEO_EXTENSIONS


def read_video(path: str | os.PathLike[str], *, max_frames: int | None = None, start: int = 0,
               fps: float | None = None) -> Video:
    """Read frames `start, start+1, ...` (at most `max_frames`) as uint8 RGB (T, H, W, 3).

    `path` is a video file (see SUPPORTED_VIDEO_EXTENSIONS) or a folder of images in natural order.
    `fps` is the frame rate to report for frame folders; video files report their own and ignore it.
    A file that decodes fewer frames than its header (or duration) promises is reported as truncated
    rather than returned short; a header that overstates by one frame a stream that is whole and decodes
    cleanly (an AVI that counts a dropped frame) is not truncation, and the frames decoded are returned
    (see `_check_complete`). Raises VideoError, or ClipTooShortError when `start` is past the end.
    """
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    _check_fps(fps)
    p = _check_path(path)
    if p.is_dir():
        return _read_folder(p, str(path), max_frames=max_frames, start=start, fps=fps)
    return _read_container(p, str(path), max_frames=max_frames, start=start)


def probe_video(path: str | os.PathLike[str], *, fps: float | None = None) -> VideoInfo:
    """Describe a video file or frame folder without decoding its pixels.

    Frame counts come from the container header, else from counting packets (no decoding); frame
    folders read only image headers. A truncated file whose header survived probes as whole:
    only `read_video` decodes far enough to notice.
    """
    _check_fps(fps)
    p = _check_path(path)
    name = str(path)
    if p.is_dir():
        files = _list_frames(p, name)
        return _folder_info(name, files, _check_sizes(files, name), fps)
    try:
        with av.open(str(p)) as container:
            stream = _video_stream(container, name)
            return _container_info(container, stream, name, p, count_packets=True)
    except _AV_ERRORS as exc:
        raise _unreadable(name, exc) from None


# ---------------------------------------------------------------- checks shared by both kinds of input


def _check_path(path: str | os.PathLike[str]) -> Path:
    """Existence, type and emptiness: the mistakes worth a specific message before PyAV sees the file."""
    p = Path(path)
    if not p.exists():
        raise VideoError(f"{path}: no such file or folder")
    if p.is_dir():
        return p
    suffix = p.suffix.lower()
    if suffix not in SUPPORTED_VIDEO_EXTENSIONS:
        is_image = suffix in SUPPORTED_IMAGE_EXTENSIONS
        hint = " (a single image is not a video; pass a folder of frames)" if is_image else ""
        raise VideoError(f"{path}: unsupported file type {suffix or '(no extension)'!r}{hint}; "
                         f"expected {', '.join(SUPPORTED_VIDEO_EXTENSIONS)} or a folder of frames")
    if p.stat().st_size == 0:
        raise VideoError(f"{path}: file is empty (0 bytes)")
    return p


def _check_fps(fps: float | None) -> None:
    if fps is not None and not (fps > 0 and np.isfinite(fps)):
        raise ValueError(f"fps must be a positive number or None, got {fps}")


def _unreadable(name: str, exc: BaseException, where: str = "") -> VideoError:
    if isinstance(exc, PermissionError):
        return VideoError(f"{name}: cannot be read (permission denied)")
    return VideoError(f"{name}: not a readable video (truncated or corrupt: {where}{_reason(exc)})")


def _reason(exc: BaseException) -> str:
    """A short, single-line version of an av/PIL message (FFmpeg ones repeat the path; drop it)."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return " ".join(str(text).split())[:160]


# ------------------------------------------------------------------------------------ video containers


def _video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{name}: has no video stream")
    return container.streams.video[0]


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    # guessed_rate is FFmpeg's own pick for "the" frame rate (what ffprobe's r_frame_rate reflects);
    # average_rate can be off for formats with coarse timestamps (GIF delays are in 1/100 s).
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _container_name(container: av.container.InputContainer, path: Path) -> str:
    # FFmpeg names demuxers by family ("mov,mp4,m4a,3gp,3g2,mj2"); report the member the file claims.
    names = container.format.name.split(",")
    ext = path.suffix.lower().lstrip(".")
    return ext if ext in names else names[0]


def _container_info(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                    name: str, path: Path, *, count_packets: bool, frames: int | None = None) -> VideoInfo:
    ctx = stream.codec_context
    if frames is None:
        frames = stream.frames
        if frames <= 0 and count_packets:
            # Matroska/WebM headers carry no frame count; demuxing packets is cheap (no decoding).
            frames = sum(1 for packet in container.demux(stream) if packet.size)
    return VideoInfo(path=name, frames=int(frames), height=int(ctx.height), width=int(ctx.width),
                     fps=_stream_fps(stream), codec=ctx.name, container=_container_name(container, path),
                     pix_fmt=ctx.pix_fmt or "")


def _expected_end(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """End time in seconds the header promises (for formats with no frame count), or None if unknown."""
    if stream.duration is not None and stream.time_base is not None:
        start = stream.start_time or 0
        return float((start + stream.duration) * stream.time_base)
    if container.duration is not None:
        return (container.duration + (container.start_time or 0)) / av.time_base
    return None


def _read_container(p: Path, name: str, *, max_frames: int | None, start: int) -> Video:
    out: list[np.ndarray] = []
    decoded = 0
    last_end: float | None = None
    stopped_early = False
    try:
        with av.open(str(p)) as container:
            stream = _video_stream(container, name)
            stream.thread_type = "AUTO"  # frame + slice threads: much faster on HD, same frames
            log = _StreamLog(indexed=len(stream.index_entries))
            for frame in _decode(container, stream, log):
                if frame.time is not None:
                    step = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
                    last_end = frame.time + step
                if decoded >= start:
                    if out and (frame.height, frame.width) != out[0].shape[:2]:
                        raise VideoError(f"{name}: frame size changes mid-stream ({out[0].shape[1]}x"
                                         f"{out[0].shape[0]} to {frame.width}x{frame.height}), not supported")
                    out.append(frame.to_ndarray(format="rgb24"))
                decoded += 1
                if max_frames is not None and len(out) >= max_frames:
                    stopped_early = True
                    break
            if stopped_early:
                # The source's frame count: the header's, else count packets in a fresh pass (the
                # decoder has already swallowed an unknown number of packets ahead of its output).
                info = _container_info(container, stream, name, p, count_packets=False)
                if info.frames <= 0:
                    info = dataclasses.replace(info, frames=probe_video(p).frames)
            else:
                _check_complete(container, stream, name, decoded, last_end, log)
                info = _container_info(container, stream, name, p, count_packets=False, frames=decoded)
    except _AV_ERRORS as exc:
        raise _unreadable(name, exc, f"after {decoded} frames: " if decoded else "") from None
    if decoded == 0:
        raise VideoError(f"{name}: not a readable video (truncated or corrupt: no frame could be decoded)")
    if not out:
        raise ClipTooShortError(f"{name}: cannot start at frame {start}, the video has {decoded} frames")
    return Video(frames=np.stack(out), info=info)


@dataclass
class _StreamLog:
    """What reading a stream packet by packet showed, beside the frames themselves.

    `indexed`: entries in the container's index when the file was opened (AVI's idx1 / OpenDML indexes,
    MP4's sample table; a file cut short has lost its trailing idx1, so FFmpeg starts it with the packets
    it met while probing). `packets`: non-empty packets demuxed. FFmpeg flags a packet whose bytes stop
    before its declared size (AV_PKT_FLAG_CORRUPT, what a file cut mid-packet ends in) and a frame the
    decoder rebuilt from damaged data (AV_FRAME_FLAG_CORRUPT).
    """

    indexed: int
    packets: int = 0
    damaged_packets: int = 0
    damaged_frames: int = 0
    ends_cut: bool = False  # the last non-empty packet was flagged corrupt

    @property
    def damaged(self) -> bool:
        return bool(self.damaged_packets or self.damaged_frames)

    def describe_damage(self) -> str:
        return " and ".join(f"{n} damaged {what}{'' if n == 1 else 's'}" for n, what in
                            ((self.damaged_packets, "packet"), (self.damaged_frames, "frame")) if n)


def _decode(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
            log: _StreamLog) -> Iterator[av.VideoFrame]:
    """`container.decode(stream)` packet by packet, counting packets and their flags into `log`.

    PyAV's demux ends with an empty packet that flushes the decoder, so every buffered frame comes out.
    """
    for packet in container.demux(stream):
        if packet.size:
            log.packets += 1
            log.ends_cut = bool(packet.is_corrupt)
            log.damaged_packets += log.ends_cut
        for frame in packet.decode():
            log.damaged_frames += bool(frame.is_corrupt)
            yield frame


# How many frames a header's frame count may exceed what its stream holds. AVI writers may count in
# dwTotalFrames / dwLength a dropped-frame chunk (a 0-byte '00dc' entry, which FFmpeg neither indexes nor
# returns) or a frame the encoder never emitted; every player plays such a file, and `ffprobe -count_frames`
# reports one frame fewer than nb_frames. Allowed only when the stream is whole by its own account (below).
HEADER_FRAME_SLACK = 1


def _check_complete(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                    name: str, decoded: int, last_end: float | None, log: _StreamLog) -> None:
    """FFmpeg stops quietly at the end of a truncated AVI/MKV: compare with what the file promised.

    - With a frame count in the header (AVI, MP4), fewer frames is truncation unless the stream is whole by
      its own account and the header only miscounts: the shortfall is at most HEADER_FRAME_SLACK frames,
      nothing was flagged damaged, and the container's index lists exactly the packets that were read (a
      truncated AVI has lost the index written after its last frame; a truncated MP4 has fewer packets than
      its sample table). FFmpeg itself plays the packets it finds and treats nb_frames as a hint.
    - A stream that ends in a packet cut short (flagged corrupt by the demuxer) is truncated, whatever
      the counts say.
    - Without a frame count (Matroska, WebM), the frames must reach the header's duration to within 1.5
      frame intervals.
    """
    promised = stream.frames
    if 0 < promised and decoded < promised:
        whole = not log.damaged and log.packets == log.indexed
        if whole and promised - decoded <= HEADER_FRAME_SLACK:
            return  # the header miscounts a stream that is all there
        if log.damaged:
            detail = f"; FFmpeg flagged {log.describe_damage()}"
        elif log.packets != log.indexed:
            detail = f"; {log.packets} packets read, {log.indexed} in its index"
        else:
            detail = ""
        raise VideoError(f"{name}: not a readable video (truncated or corrupt: "
                         f"decoded {decoded} of the {promised} frames in its header{detail})")
    if log.ends_cut:
        raise VideoError(f"{name}: not a readable video (truncated or corrupt: the stream ends in a packet "
                         f"cut short, after {decoded} frames)")
    if promised > 0:
        return
    end = _expected_end(container, stream)
    fps = _stream_fps(stream)
    if end is None or last_end is None or fps <= 0:
        return
    # Durations without a frame count (Matroska, WebM) are approximate: allow 1.5 frame intervals.
    if end - last_end > 1.5 / fps:
        raise VideoError(f"{name}: not a readable video (truncated or corrupt: frames stop at "
                         f"{last_end:.2f} s but its header says {end:.2f} s)")


# --------------------------------------------------------------------------------------- frame folders


def _natural_key(name: str) -> list[object]:
    """Sort "2.png" before "10.png": digit runs compare as numbers, the rest case-insensitively."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name)]


def _list_frames(folder: Path, name: str) -> list[Path]:
    files = [f for f in folder.iterdir()
             if f.suffix.lower() in SUPPORTED_IMAGE_EXTENSIONS and not f.name.startswith(".") and f.is_file()]
    if not files:
        raise VideoError(f"{_folder_label(name)}: folder has no images "
                         f"({', '.join(SUPPORTED_IMAGE_EXTENSIONS)})")
    return sorted(files, key=lambda f: _natural_key(f.name))


def _folder_label(name: str) -> str:
    return name if name.endswith(("/", os.sep)) else name + "/"


def _open_image(file: Path, name: str) -> Image.Image:
    try:
        return Image.open(file)
    except _PIL_ERRORS as exc:
        raise VideoError(f"{_folder_label(name)}: frame {file.name} is not a readable image "
                         f"({_reason(exc)})") from None


@dataclass(frozen=True)
class _FirstFrame:
    width: int
    height: int
    format: str
    mode: str


def _check_sizes(files: list[Path], name: str) -> _FirstFrame:
    """Read every header (cheap) so mixed sizes are caught even when only some frames are decoded."""
    with _open_image(files[0], name) as im:
        first = _FirstFrame(im.width, im.height, (im.format or files[0].suffix.lstrip(".")).lower(), im.mode)
    for file in files[1:]:
        with _open_image(file, name) as im:
            if im.size != (first.width, first.height):
                raise VideoError(f"{_folder_label(name)}: frame {file.name} is {im.width}x{im.height} but frame "
                                 f"{files[0].name} is {first.width}x{first.height} (mixed sizes)")
    return first


def _folder_info(name: str, files: list[Path], first: _FirstFrame, fps: float | None) -> VideoInfo:
    return VideoInfo(path=name, frames=len(files), height=first.height, width=first.width,
                     fps=float(fps) if fps else 0.0, codec=first.format, container="frames",
                     pix_fmt=_PIL_PIX_FMT.get(first.mode, first.mode.lower()))


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Decode one image to uint8 RGB: convert() promotes gray, palette and RGBA (alpha dropped).

    16-bit grayscale is scaled to 8 bits first, because convert() would clip it at 255 instead.
    """
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(im).astype(np.uint32)
        gray = ((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def _read_folder(folder: Path, name: str, *, max_frames: int | None, start: int, fps: float | None) -> Video:
    files = _list_frames(folder, name)
    first = _check_sizes(files, name)
    info = _folder_info(name, files, first, fps)
    if start >= len(files):
        raise ClipTooShortError(f"{_folder_label(name)}: cannot start at frame {start}, the folder has "
                                f"{len(files)} frames")
    chosen = files[start:] if max_frames is None else files[start:start + max_frames]
    out = np.empty((len(chosen), info.height, info.width, 3), dtype=np.uint8)
    for i, file in enumerate(chosen):
        try:
            with Image.open(file) as im:
                out[i] = _to_rgb(im)
        except _PIL_ERRORS as exc:
            raise VideoError(f"{_folder_label(name)}: frame {file.name} is not a readable image "
                             f"({_reason(exc)})") from None
    return Video(frames=out, info=info)
