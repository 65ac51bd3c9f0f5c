"""`mhad`: UTD-MHAD RGB videos with LFDM's preprocessing (Ni et al., CVPR 2023; see PAPER.md 8.3).

Layouts (`layout="auto"` prefers the native videos when both are present):

- `rgb`: the native `root/RGB/a{action}_s{subject}_t{trial}_color.avi` (640x480, 30 fps), or the same files
  directly under `root`. With `crop=True` (default) each frame is cut to LFDM's box: rows 0:480, cols
  156:492 (480 high x 336 wide; LFDM's depth-map bounding box x 78..245, y 0..239 at 320x240, doubled). A
  video of another size gets the box scaled proportionally.
- `crop_image`: LFDM's frame folders `root/crop_image/a{a}_s{s}_t{t}/a{a}_s{s}_t{t}_000.png ...` (or the
  folders directly under `root`), already cropped to 480x336, so no crop is applied. These folders carry no
  frame rate; 30 fps (UTD-MHAD's Kinect rate) is recorded.

Frames are then resized to the spec size with area interpolation (aspect not preserved, as LFDM does).
Caption = LFDM's class name for the action. Splits are by subject (LFDM: train 1,2,3,5; test 4,6,7,8);
subjects in none of the lists are left out. Clip ids `mhad/a{a}_s{s}_t{t}`, ordered by (action, subject,
trial). Labels: `action` (1-based), `class_index` (0-based), `class_name`, `subject`, `trial`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dvdm.data.base import Clip, ClipSpec
from dvdm.data.folder import (
    check_root,
    check_spec,
    clip_indices,
    finish_frames,
    frames_needed,
    scale_box,
    subject_splits,
    too_short,
)
from dvdm.errors import ClipTooShortError, ConfigError, DataError
from dvdm.video import read_video

log = logging.getLogger(__name__)

# LFDM's DM/datasets_mhad.py, in action order a1..a27.
MHAD_CLASSES: tuple[str, ...] = (
    "right arm swipe to the left", "right arm swipe to the right", "right hand wave", "two hand front clap",
    "right arm throw", "cross arms in the chest", "basketball shooting", "draw x", "draw circle clockwise",
    "draw circle counter clockwise", "draw triangle", "right hand bowling", "front boxing",
    "baseball swing from right", "tennis forehand swing", "two arms curl", "tennis serve", "two hand push",
    "knock on door", "hand catch", "pick up and throw", "jogging", "walking", "sit to stand", "stand to sit",
    "forward lunge (left foot forward)", "squat",
)

MHAD_SIZE = (480, 640)  # (H, W) of the native RGB videos
MHAD_CROP = (0, 156, 480, 336)  # (top, left, height, width): rows 0:480, cols 156:492
MHAD_FPS = 30.0

_VIDEO_RE = re.compile(r"a(\d+)_s(\d+)_t(\d+)_color\.avi", re.IGNORECASE)
_FOLDER_RE = re.compile(r"a(\d+)_s(\d+)_t(\d+)")
_LAYOUTS = ("auto", "rgb", "crop_image")


@dataclass(frozen=True)
class _Item:
    action: int
    subject: int
    trial: int
    path: Path
    kind: str  # "rgb" or "crop_image"

    @property
    def stem(self) -> str:
        return f"a{self.action}_s{self.subject}_t{self.trial}"


def _scan(folder: Path, kind: str) -> list[_Item]:
    if not folder.is_dir():
        return []
    items = []
    for entry in folder.iterdir():
        if kind == "rgb":
            m = _VIDEO_RE.fullmatch(entry.name)
            ok = m is not None and entry.is_file()
        else:
            m = _FOLDER_RE.fullmatch(entry.name)
            ok = m is not None and entry.is_dir()
        if ok:
            items.append(_Item(int(m.group(1)), int(m.group(2)), int(m.group(3)), entry, kind))
    return items


class MhadSource:
    """UTD-MHAD clips with class-name captions and LFDM's subject split; see the module docstring."""

    name = "mhad"

    def __init__(self, spec: ClipSpec, root: str | os.PathLike[str], train_subjects: Any = (1, 2, 3, 5),
                 test_subjects: Any = (4, 6, 7, 8), val_subjects: Any = (), crop: bool = True,
                 layout: str = "auto", skip_short: bool = False) -> None:
        self.spec = check_spec(spec)
        self.root = check_root(root, "mhad")
        self.subject_split = subject_splits(train_subjects, val_subjects, test_subjects, "mhad")
        self.crop = bool(crop)
        if layout not in _LAYOUTS:
            raise ConfigError(f"mhad: layout must be one of {', '.join(_LAYOUTS)}, got {layout!r}")
        self.skip_short = bool(skip_short)
        self.layout, self.items = self._discover(layout)

    @classmethod
    def options_help(cls) -> dict[str, str]:
        return {
            "root": "UTD-MHAD folder with RGB/a*_s*_t*_color.avi (or the videos themselves), or LFDM's "
                    "crop_image/a*_s*_t*/ frame folders",
            "train_subjects": "subjects in train (default 1,2,3,5: LFDM's split)",
            "test_subjects": "subjects in test (default 4,6,7,8)",
            "val_subjects": "subjects in val (default none); subjects in no list are left out",
            "crop": "cut the native 640x480 videos to LFDM's 480x336 box (rows 0:480, cols 156:492) before "
                    "resizing (default true; crop_image folders are already cropped)",
            "layout": "auto (default: native videos if present, else crop_image), rgb or crop_image",
            "skip_short": "skip videos shorter than the clip with a warning instead of failing (default false)",
        }

    def _discover(self, layout: str) -> tuple[str, list[_Item]]:
        root = self.root
        found: dict[str, list[_Item]] = {}
        if layout in ("auto", "rgb"):
            found["rgb"] = _scan(root / "RGB", "rgb") or _scan(root, "rgb")
        if layout in ("auto", "crop_image"):
            found["crop_image"] = _scan(root / "crop_image", "crop_image") or _scan(root, "crop_image")
        chosen = next((k for k in ("rgb", "crop_image") if found.get(k)), None)
        if chosen is None:
            what = {"auto": "RGB/a*_s*_t*_color.avi or crop_image/a*_s*_t*/",
                    "rgb": "RGB/a*_s*_t*_color.avi", "crop_image": "crop_image/a*_s*_t*/"}[layout]
            raise DataError(f"{root}: no UTD-MHAD data found (expected {what})")
        items = sorted(found[chosen], key=lambda it: (it.action, it.subject, it.trial))
        for it in items:
            if not 1 <= it.action <= len(MHAD_CLASSES):
                raise DataError(f"{it.path}: action {it.action} is not a UTD-MHAD action (1-{len(MHAD_CLASSES)})")
        seen: dict[str, Path] = {}
        for it in items:
            if it.stem in seen:
                raise DataError(f"{it.path}: same action/subject/trial as {seen[it.stem]}")
            seen[it.stem] = it.path
        return chosen, items

    def __iter__(self) -> Iterator[Clip]:
        for item in self.items:
            split = self.subject_split.get(item.subject)
            if split is None:
                log.debug("mhad: subject %d is in no split; leaving out %s", item.subject, item.path.name)
                continue
            clip = self._clip(item, split)
            if clip is not None:
                yield clip

    def _clip(self, item: _Item, split: str) -> Clip | None:
        rel = item.path.relative_to(self.root).as_posix()
        video = read_video(item.path, max_frames=frames_needed(self.spec),
                           fps=MHAD_FPS if item.kind == "crop_image" else None)
        try:
            idx = clip_indices(len(video.frames), self.spec)
        except ClipTooShortError as exc:
            too_short(rel, exc, self.skip_short)
            return None
        info = video.info
        provenance: dict[str, Any] = {"path": rel, "frame_indices": idx, "original_size": [info.height, info.width],
                                      "fps": float(info.fps or MHAD_FPS)}
        box = None
        if item.kind == "rgb" and self.crop:
            box = scale_box(MHAD_CROP, MHAD_SIZE, (info.height, info.width))
            provenance["crop"] = list(box)
        elif item.kind == "crop_image":
            provenance["upstream_crop"] = list(MHAD_CROP)  # applied by LFDM's preprocessing, on 640x480
        return Clip(
            id=f"mhad/{item.stem}",
            frames=finish_frames(video.frames[idx], self.spec, box),
            caption=MHAD_CLASSES[item.action - 1],
            split=split,
            source=self.name,
            provenance=provenance,
            labels={"action": item.action, "class_index": item.action - 1,
                    "class_name": MHAD_CLASSES[item.action - 1], "subject": item.subject, "trial": item.trial},
        )
