"""`natops`: NATOPS aircraft handling signals, cut into repetitions as LFDM does (PAPER.md 8.3).

Layouts (`layout="auto"` prefers the native videos when both are present):

- `avi`: the native `root/gestureXX/gXXsYY.avi` (RGB, 320x240 @ 20 fps; the mask `gXXsYYm.avi` and depth
  `gXXsYYd.avi` files are ignored), or the same files directly under `root`, plus `segmentation.txt`
  (default `root/segmentation.txt`) giving each repetition's 1-based inclusive frame range. Each video is
  read once and cut into its repetitions.
- `split_img_data`: LFDM's already-cut frame folders `root/split_img_data/gXXsYYpZZ/gXXsYYpZZ-CCCC-FFFF.png`
  (or the folders directly under `root`), where FFFF is the frame's index in the original video.

Crop: LFDM's loaders slice `frame[10:239, 30:290]` (DM/datasets_natops.py: y_min, y_max, x_min, x_max =
10, 239, 30, 290), i.e. rows 10..238 and cols 30..289: a 229 x 260 box. PAPER.md words it "y 10-239,
x 30-290"; we follow the code's slice exactly. Then resize to the spec size (area interpolation).

Caption = gesture name. Split by subject (LFDM: train 3,4,8,9,12,13,15,17,19,20; test
2,5,6,7,10,11,14,16,18; subject 1 in neither, so left out). Clip ids `natops/gXXsYYpZZ` (LFDM's names),
ordered by (gesture, subject, repetition). Labels: `gesture` (1-based), `class_index` (0-based),
`class_name`, `subject`, `repetition`. Provenance adds `segment` [start, end] (1-based, inclusive).

segmentation.txt, as LFDM's `save_seg_dict` reads it: a line starting with "// Subject" opens a subject block;
inside it a line like `s,g,n` opens a gesture block; inside that, lines `r:start,end` are repetitions. LFDM
numbers subjects 1..20 and gestures 1..24 by their order in the file and repetitions by their order in the
block. This parser does the same, except that it takes the subject from the header ("// Subject 3") when it
has a number, and the gesture from `s,g,n` when `s` is that subject and `g` is 1..24, so a reduced file
(some subjects or gestures only) keys correctly. Other lines that start with a digit but match neither form
(or that LFDM's regexes would take for one, such as ",,") are errors; other text lines are ignored, as in LFDM.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvdm.data.base import Clip, ClipSpec
from dvdm.data.folder import (
    check_root,
    check_spec,
    clip_indices,
    finish_frames,
    natural_key,
    scale_box,
    subject_splits,
    too_short,
)
from dvdm.errors import ClipTooShortError, ConfigError, DataError
from dvdm.video import SUPPORTED_IMAGE_EXTENSIONS, read_video

log = logging.getLogger(__name__)

# LFDM's DM/datasets_natops.py, in gesture order g01..g24.
NATOPS_CLASSES: tuple[str, ...] = (
    "I Have Command", "All Clear", "Not Clear", "Spread Wings", "Fold Wings", "Lock Wings", "Up Hook",
    "Down Hook", "Remove Tiedowns", "Remove Chocks", "Insert Chocks", "Move Ahead", "Turn Left", "Turn Right",
    "Next Marshaller", "Slow Down", "Stop", "Nosegear Steering", "Hot Brakes", "Brakes On", "Brakes Off",
    "Install Tiedowns", "Fire", "Cut Engine",
)

NATOPS_SIZE = (240, 320)  # (H, W)
NATOPS_CROP = (10, 30, 229, 260)  # (top, left, height, width) = LFDM's frame[10:239, 30:290]
NATOPS_FPS = 20.0

_VIDEO_RE = re.compile(r"g(\d+)s(\d+)\.avi", re.IGNORECASE)
_FOLDER_RE = re.compile(r"g(\d+)s(\d+)p(\d+)")
_FRAME_INDEX_RE = re.compile(r"-(\d+)-(\d+)$")
_SUBJECT_RE = re.compile(r"//\s*Subject\b[\s:#-]*(\d*)", re.IGNORECASE)
_GESTURE_RE = re.compile(r"(\d+)\s*,\s*(\d+)\s*,\s*(\d+)")
_REP_RE = re.compile(r"(\d+)\s*:\s*(\d+)\s*,\s*(\d+)")
# What LFDM's parser (re.match, so prefixes, digits optional) takes for a header / repetition line: anything
# it would act on must be well-formed here.
_LFDM_GESTURE_RE = re.compile(r"\d*,\d*,\d*")
_LFDM_REP_RE = re.compile(r"\d*:\d*,\d*")
_LAYOUTS = ("auto", "avi", "split_img_data")


@dataclass(frozen=True)
class Segment:
    """One repetition: 1-based inclusive frame range, and the segmentation file line it came from."""

    repetition: int
    start: int
    end: int
    line: int


def parse_segmentation(path: str | os.PathLike[str]) -> dict[tuple[int, int], list[Segment]]:
    """Parse NATOPS segmentation.txt into {(subject, gesture): [Segment, ...]} (see the module docstring)."""
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise DataError(f"{path}: segmentation file not found (NATOPS videos are cut into repetitions with it; "
                        f"set the 'segmentation' option)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read segmentation file ({exc.strerror or exc})") from None
    out: dict[tuple[int, int], list[Segment]] = {}
    subject: int | None = None
    subject_count = 0
    gesture: int | None = None
    gesture_count = 0
    subjects_seen: dict[int, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        m = _SUBJECT_RE.match(line)
        if m:
            subject_count += 1
            subject = int(m.group(1)) if m.group(1) else subject_count
            if subject in subjects_seen:
                raise DataError(f"{name} line {number}: subject {subject} appears twice "
                                f"(first on line {subjects_seen[subject]})")
            subjects_seen[subject] = number
            gesture, gesture_count = None, 0
            continue
        if not (line[0].isdigit() or _LFDM_GESTURE_RE.match(line) or _LFDM_REP_RE.match(line)):
            continue  # comments and prose, ignored as LFDM does
        m = _GESTURE_RE.fullmatch(line)
        if m:
            if subject is None:
                raise DataError(f"{name} line {number}: gesture block {line!r} before any '// Subject' line")
            gesture_count += 1
            s, g = int(m.group(1)), int(m.group(2))
            gesture = g if s == subject and 1 <= g <= len(NATOPS_CLASSES) else gesture_count
            if (subject, gesture) in out:
                raise DataError(f"{name} line {number}: subject {subject} gesture {gesture} appears twice")
            out[(subject, gesture)] = []
            continue
        m = _REP_RE.fullmatch(line)
        if m:
            if gesture is None or subject is None:
                raise DataError(f"{name} line {number}: repetition {line!r} outside a gesture block")
            start, end = int(m.group(2)), int(m.group(3))
            if start < 1 or end < start:
                raise DataError(f"{name} line {number}: bad frame range {start},{end} (need 1 <= start <= end)")
            reps = out[(subject, gesture)]
            reps.append(Segment(len(reps) + 1, start, end, number))
            continue
        raise DataError(f"{name} line {number}: cannot parse {line!r} (expected 'subject,gesture,count' or "
                        f"'repetition:start,end')")
    if not out:
        raise DataError(f"{path}: no gesture blocks found (not a NATOPS segmentation.txt?)")
    empty = [k for k, v in out.items() if not v]
    if empty:
        s, g = empty[0]
        raise DataError(f"{name}: subject {s} gesture {g} has no repetitions")
    return out


@dataclass(frozen=True)
class _Video:
    gesture: int
    subject: int
    path: Path


@dataclass(frozen=True)
class _Folder:
    gesture: int
    subject: int
    repetition: int
    path: Path


def _scan_videos(root: Path) -> list[_Video]:
    """RGB videos directly under root or in its gestureXX/ folders (not a recursive walk: LFDM's frame
    folders may sit next to them, hundreds of thousands of files)."""
    if not root.is_dir():
        return []
    candidates: list[Path] = []
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.lower().startswith("gesture"):
            candidates.extend(entry.iterdir())
        else:
            candidates.append(entry)
    out = []
    for f in candidates:
        m = _VIDEO_RE.fullmatch(f.name)
        if m and f.is_file():
            out.append(_Video(int(m.group(1)), int(m.group(2)), f))
    return out


def _scan_folders(folder: Path) -> list[_Folder]:
    if not folder.is_dir():
        return []
    out = []
    for d in folder.iterdir():
        m = _FOLDER_RE.fullmatch(d.name)
        if m and d.is_dir():
            out.append(_Folder(int(m.group(1)), int(m.group(2)), int(m.group(3)), d))
    return out


class NatopsSource:
    """NATOPS repetitions with gesture-name captions and LFDM's subject split; see the module docstring."""

    name = "natops"

    def __init__(self, spec: ClipSpec, root: str | os.PathLike[str], segmentation: str | os.PathLike[str] | None = None,
                 train_subjects: Any = (3, 4, 8, 9, 12, 13, 15, 17, 19, 20),
                 test_subjects: Any = (2, 5, 6, 7, 10, 11, 14, 16, 18), val_subjects: Any = (),
                 crop: bool = True, layout: str = "auto", skip_short: bool = False) -> None:
        self.spec = check_spec(spec)
        self.root = check_root(root, "natops")
        self.subject_split = subject_splits(train_subjects, val_subjects, test_subjects, "natops")
        self.crop = bool(crop)
        if layout not in _LAYOUTS:
            raise ConfigError(f"natops: layout must be one of {', '.join(_LAYOUTS)}, got {layout!r}")
        self.skip_short = bool(skip_short)
        self.segmentation_path = Path(segmentation).expanduser() if segmentation else self.root / "segmentation.txt"
        self.videos: list[_Video] = []
        self.folders: list[_Folder] = []
        self.segments: dict[tuple[int, int], list[Segment]] = {}
        if layout in ("auto", "avi"):
            self.videos = _scan_videos(self.root)
        if not self.videos and layout in ("auto", "split_img_data"):
            self.folders = _scan_folders(self.root / "split_img_data") or _scan_folders(self.root)
        if self.videos:
            self.layout = "avi"
            self.videos.sort(key=lambda v: (v.gesture, v.subject))
            self._check_unique([(v.gesture, v.subject) for v in self.videos], [v.path for v in self.videos])
            self.segments = parse_segmentation(self.segmentation_path)
        elif self.folders:
            self.layout = "split_img_data"
            self.folders.sort(key=lambda f: (f.gesture, f.subject, f.repetition))
            self._check_unique([(f.gesture, f.subject, f.repetition) for f in self.folders],
                               [f.path for f in self.folders])
        else:
            what = {"auto": "gestureXX/gXXsYY.avi or split_img_data/gXXsYYpZZ/", "avi": "gestureXX/gXXsYY.avi",
                    "split_img_data": "split_img_data/gXXsYYpZZ/"}[layout]
            raise DataError(f"{self.root}: no NATOPS data found (expected {what})")
        for g, path in [(v.gesture, v.path) for v in self.videos] + [(f.gesture, f.path) for f in self.folders]:
            if not 1 <= g <= len(NATOPS_CLASSES):
                raise DataError(f"{path}: gesture {g} is not a NATOPS gesture (1-{len(NATOPS_CLASSES)})")

    @staticmethod
    def _check_unique(keys: list[tuple[int, ...]], paths: list[Path]) -> None:
        seen: dict[tuple[int, ...], Path] = {}
        for key, path in zip(keys, paths, strict=True):
            if key in seen:
                raise DataError(f"{path}: same gesture/subject as {seen[key]}")
            seen[key] = path

    @classmethod
    def options_help(cls) -> dict[str, str]:
        return {
            "root": "NATOPS folder with gestureXX/gXXsYY.avi (or the videos themselves), or LFDM's "
                    "split_img_data/gXXsYYpZZ/ frame folders",
            "segmentation": "segmentation.txt with each repetition's frame range (default root/segmentation.txt)",
            "train_subjects": "subjects in train (default 3,4,8,9,12,13,15,17,19,20: LFDM's split)",
            "test_subjects": "subjects in test (default 2,5,6,7,10,11,14,16,18)",
            "val_subjects": "subjects in val (default none); subjects in no list (LFDM: subject 1) are left out",
            "crop": "cut LFDM's box frame[10:239, 30:290] of the 320x240 frames before resizing (default true)",
            "layout": "auto (default: native videos if present, else split_img_data), avi or split_img_data",
            "skip_short": "skip repetitions shorter than the clip with a warning instead of failing (default false)",
        }

    def __iter__(self) -> Iterator[Clip]:
        if self.layout == "avi":
            for video in self.videos:
                split = self.subject_split.get(video.subject)
                if split is None:
                    log.debug("natops: subject %d is in no split; leaving out %s", video.subject, video.path.name)
                    continue
                yield from self._video_clips(video, split)
        else:
            for folder in self.folders:
                split = self.subject_split.get(folder.subject)
                if split is None:
                    continue
                clip = self._folder_clip(folder, split)
                if clip is not None:
                    yield clip

    def _box(self, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
        return scale_box(NATOPS_CROP, NATOPS_SIZE, size) if self.crop else None

    def _make(self, gesture: int, subject: int, repetition: int, split: str, frames: np.ndarray, idx: list[int],
              rel: str, size: tuple[int, int], fps: float, extra: dict[str, Any]) -> Clip:
        box = self._box(size)
        provenance: dict[str, Any] = {"path": rel, "frame_indices": idx, "original_size": [size[0], size[1]],
                                      "fps": float(fps)}
        if box is not None:
            provenance["crop"] = list(box)
        provenance.update(extra)
        return Clip(
            id=f"natops/g{gesture:02d}s{subject:02d}p{repetition:02d}",
            frames=finish_frames(frames, self.spec, box),
            caption=NATOPS_CLASSES[gesture - 1],
            split=split,
            source=self.name,
            provenance=provenance,
            labels={"gesture": gesture, "class_index": gesture - 1, "class_name": NATOPS_CLASSES[gesture - 1],
                    "subject": subject, "repetition": repetition},
        )

    def _video_clips(self, video: _Video, split: str) -> Iterator[Clip]:
        rel = video.path.relative_to(self.root).as_posix()
        segments = self.segments.get((video.subject, video.gesture))
        if not segments:
            raise DataError(f"{rel}: {self.segmentation_path.name} has no repetitions for subject {video.subject} "
                            f"gesture {video.gesture}")
        decoded = read_video(video.path, max_frames=max(s.end for s in segments))
        n = len(decoded.frames)
        info = decoded.info
        for seg in segments:
            if seg.end > n:
                raise DataError(f"{rel}: has {n} frames but {self.segmentation_path.name} line {seg.line} ends "
                                f"repetition {seg.repetition} at frame {seg.end}")
            where = f"{rel} repetition {seg.repetition} (frames {seg.start}-{seg.end})"
            try:
                local = clip_indices(seg.end - seg.start + 1, self.spec)
            except ClipTooShortError as exc:
                too_short(where, exc, self.skip_short)
                continue
            idx = [seg.start - 1 + i for i in local]
            yield self._make(video.gesture, video.subject, seg.repetition, split, decoded.frames[idx], idx, rel,
                             (info.height, info.width), info.fps or NATOPS_FPS, {"segment": [seg.start, seg.end]})

    def _folder_clip(self, folder: _Folder, split: str) -> Clip | None:
        rel = folder.path.relative_to(self.root).as_posix()
        video = read_video(folder.path, fps=NATOPS_FPS)
        try:
            local = clip_indices(len(video.frames), self.spec)
        except ClipTooShortError as exc:
            too_short(rel, exc, self.skip_short)
            return None
        # LFDM names frames gXXsYYpZZ-<count>-<original frame index>.png; use that index when present.
        names = sorted((f for f in folder.path.iterdir() if f.suffix.lower() in SUPPORTED_IMAGE_EXTENSIONS
                        and f.is_file() and not f.name.startswith(".")), key=lambda f: natural_key(f.name))
        originals = []
        for f in names:
            m = _FRAME_INDEX_RE.search(f.stem)
            originals.append(int(m.group(2)) if m else None)
        if len(originals) == len(video.frames) and all(o is not None for o in originals):
            idx = [originals[i] for i in local]
        else:
            idx = local
        info = video.info
        return self._make(folder.gesture, folder.subject, folder.repetition, split, video.frames[local], idx, rel,
                          (info.height, info.width), info.fps or NATOPS_FPS, {})
