"""A folder of clips for `dvdm fvd REAL FAKE`: video files and/or subfolders of frames, one clip each.

Entries are what `dvdm.video.read_video` reads: files with a video extension (mp4, avi, webm, gif, ...) and
subfolders holding images (png, jpg, ...). Hidden entries (".name", e.g. half-written temporaries) and other
files are ignored. The folder is probed first (headers only) so that an empty folder or a clip that is too
short is reported by name before any decoding or network work starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from dvdm.errors import ClipTooShortError, VideoError
from dvdm.evaluate.errors import EvaluationError
from dvdm.video.reader import (
    SUPPORTED_IMAGE_EXTENSIONS,
    SUPPORTED_VIDEO_EXTENSIONS,
    VideoInfo,
    _natural_key,
    probe_video,
    read_video,
)


def _is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(f.suffix.lower() in SUPPORTED_IMAGE_EXTENSIONS and not f.name.startswith(".")
                                 for f in path.iterdir())


def list_video_folder(folder: str | os.PathLike[str]) -> list[Path]:
    """The clips in `folder`, in natural name order. Raises VideoError/EvaluationError when there are none."""
    root = Path(folder)
    if not root.exists():
        raise VideoError(f"{folder}: no such folder")
    if not root.is_dir():
        raise VideoError(f"{folder}: is a file, expected a folder of videos (or of frame folders)")
    entries = []
    for entry in root.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in SUPPORTED_VIDEO_EXTENSIONS:
            entries.append(entry)
        elif _is_frame_folder(entry):
            entries.append(entry)
    if not entries:
        images_here = any(f.suffix.lower() in SUPPORTED_IMAGE_EXTENSIONS for f in root.iterdir() if f.is_file())
        hint = (" (it holds images: one folder of frames is one clip; put each clip's frames in its own subfolder)"
                if images_here else "")
        raise EvaluationError(f"{folder}: no videos ({', '.join(SUPPORTED_VIDEO_EXTENSIONS)}) or frame subfolders "
                              f"found{hint}")
    return sorted(entries, key=lambda p: _natural_key(p.name))


def scan_video_folder(folder: str | os.PathLike[str], min_frames: int = 1) -> list[Path]:
    """`list_video_folder`, plus a header probe of every clip: each must have at least `min_frames` frames.

    Raises ClipTooShortError naming the short clips (up to five) and how many there are.
    """
    paths = list_video_folder(folder)
    short = [(p, info.frames) for p, info in zip(paths, probe_clips(paths)) if info.frames < min_frames]
    if short:
        shown = ", ".join(f"{p.name} ({n} frames)" for p, n in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise ClipTooShortError(f"{folder}: {len(short)} of {len(paths)} clips have fewer than {min_frames} frames: "
                                f"{shown}{more}")
    return paths


def probe_clips(paths: Sequence[Path]) -> list[VideoInfo]:
    return [probe_video(p) for p in paths]


def iter_clips(paths: Sequence[Path], frames: int | None = None) -> Iterator[np.ndarray]:
    """uint8 (T, H, W, 3) of each clip, one at a time (the first `frames` frames, or all when None)."""
    for p in paths:
        clip = read_video(p, max_frames=frames).frames
        if frames is not None and clip.shape[0] < frames:
            # headers can overstate the count (read_video rejects truncation, but not a header that lies)
            raise ClipTooShortError(f"{p}: decoded {clip.shape[0]} frames, at least {frames} are needed")
        yield clip
