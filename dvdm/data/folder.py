"""`folder`: any folder of videos (or frame folders) plus a captions file.

The captions file is a CSV with a header row or a JSONL file (one JSON object a line) with

| column | required | meaning |
|---|---|---|
| `path` | yes | the video file or frame folder, relative to `root` (may not leave `root`) |
| `caption` | yes | the text condition (may be empty) |
| `split` | no | `train`, `val` or `test`; empty or missing means "assign one" |
| `subject` | no | who is filmed; split-less rows are assigned per subject, so no subject straddles splits |

Any other columns are kept in `Clip.labels` as strings. Rows without a split get one deterministically: a
stable hash of (`seed`, subject or else path) picks `test` with probability `test_fraction`, `val` with
`val_fraction`, else `default_split`. The whole captions file is checked when the source is built, so a bad
row fails before any video is decoded. Line numbers in messages are the file's own (a CSV header is line 1).

This module also holds the small helpers every source shares (sampling a clip from decoded frames, stable
hashing for splits, subject lists).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dvdm.data.base import SPLITS, Clip, ClipSpec
from dvdm.errors import ClipTooShortError, ConfigError, DataError
from dvdm.video import crop, read_video, resize, sample_indices

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------ shared helpers


def check_spec(spec: Any) -> ClipSpec:
    if not isinstance(spec, ClipSpec):
        raise ConfigError(f"spec must be a ClipSpec, got {type(spec).__name__}")
    return spec


def check_root(root: str | os.PathLike[str], what: str) -> Path:
    """The dataset root must be an existing folder."""
    if root is None or str(root) == "":
        raise ConfigError(f"{what}: option 'root' is required (the dataset folder)")
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"{path}: {what} dataset root does not exist")
    if not path.is_dir():
        raise DataError(f"{path}: {what} dataset root is not a folder")
    return path


def check_split(value: Any, what: str) -> str:
    if value not in SPLITS:
        raise ConfigError(f"{what} must be one of {', '.join(SPLITS)}, got {value!r}")
    return value


def check_fractions(val_fraction: float, test_fraction: float = 0.0) -> tuple[float, float]:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    if val_fraction + test_fraction > 1.0:
        raise ConfigError(f"val_fraction + test_fraction must be <= 1, got {val_fraction} + {test_fraction}")
    return float(val_fraction), float(test_fraction)


def stable_unit(key: str, seed: int = 0) -> float:
    """A number in [0, 1) that depends only on (seed, key): the same on every machine and Python run."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hashed_split(key: str, *, val_fraction: float, test_fraction: float = 0.0, seed: int = 0,
                 default: str = "train") -> str:
    """Assign `key` to test / val / `default` with the given probabilities, deterministically."""
    u = stable_unit(key, seed)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return default


def subject_set(value: Any, what: str) -> frozenset[int]:
    """A list of subject numbers from a config (a list, tuple, single int or comma-separated string)."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = [v for v in value.replace(",", " ").split() if v]
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    try:
        out = frozenset(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a list of subject numbers, got {value!r}") from None
    return out


def subject_splits(train: Any, val: Any, test: Any, what: str) -> dict[int, str]:
    """Map subject -> split from three subject lists; a subject in two lists is a ConfigError."""
    mapping: dict[int, str] = {}
    for split, value in (("train", train), ("val", val), ("test", test)):
        for subject in sorted(subject_set(value, f"{what} {split}_subjects")):
            if subject in mapping:
                raise ConfigError(f"{what}: subject {subject} is in both {mapping[subject]}_subjects and "
                                  f"{split}_subjects")
            mapping[subject] = split
    return mapping


def scale_box(box: tuple[int, int, int, int], reference: tuple[int, int],
              size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A crop box (top, left, h, w) defined on a `reference` (H, W) frame, scaled to a frame of `size`."""
    if tuple(size) == tuple(reference):
        return box
    sy, sx = size[0] / reference[0], size[1] / reference[1]
    top, left = round(box[0] * sy), round(box[1] * sx)
    bottom, right = min(size[0], round((box[0] + box[2]) * sy)), min(size[1], round((box[1] + box[3]) * sx))
    return top, left, max(1, bottom - top), max(1, right - left)


def clip_indices(n_total: int, spec: ClipSpec, *, force_start: bool = False) -> list[int]:
    """Frame indices of one clip of `spec.frames` frames from a video of `n_total` frames.

    Follows `spec.sampling`/`stride`/`start`/`pad_short`; `force_start=True` takes consecutive frames
    from frame 0 instead (the BAIR protocol). Raises ClipTooShortError.
    """
    if force_start:
        idx = sample_indices(n_total, spec.frames, mode="stride", stride=1, start=0, pad_short=spec.pad_short)
    else:
        idx = sample_indices(n_total, spec.frames, mode=spec.sampling, stride=spec.stride, start=spec.start,
                             pad_short=spec.pad_short)
    return [int(i) for i in idx]


def frames_needed(spec: ClipSpec) -> int | None:
    """How many leading frames a clip can use at most (None: the whole video, for uniform sampling)."""
    if spec.sampling == "stride":
        return spec.start + (spec.frames - 1) * spec.stride + 1
    return None


def finish_frames(frames: np.ndarray, spec: ClipSpec, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Crop (if `box`) and resize already-selected frames to the spec's size (area interpolation)."""
    if box is not None:
        frames = crop(frames, *box)
    if frames.shape[1:3] != (spec.height, spec.width):
        frames = resize(frames, spec.height, spec.width, mode="area")
    return np.ascontiguousarray(frames, dtype=np.uint8)


def too_short(where: str, exc: ClipTooShortError, skip_short: bool) -> None:
    """Skip (with a warning) or raise a DataError naming `where`."""
    if skip_short:
        log.warning("skipping %s: %s", where, exc)
        return
    raise DataError(f"{where}: {exc} (set skip_short to skip such videos, or pad_short to pad them)") from exc


def natural_key(name: str) -> list[Any]:
    """Sort "2.png" before "10.png" and "traj_2_to_3" before "traj_10_to_11" (as read_video orders frames)."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in re.split(r"(\d+)", name)]


# ------------------------------------------------------------------------------------ captions file

REQUIRED_COLUMNS = ("path", "caption")


@dataclass
class CaptionRow:
    line: int
    path: str  # normalised, relative to root, posix separators
    caption: str
    split: str | None
    subject: str | None
    extra: dict[str, str] = field(default_factory=dict)


def _cell(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read captions file ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: captions file is not UTF-8 text (byte {exc.start})") from None


def _rows_from_csv(name: str, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        while header is not None and not any(h.strip() for h in header):
            header = next(reader, None)  # leading blank lines
        if header is None:
            raise DataError(f"{name}: captions file is empty")
        columns = [h.strip() for h in header]
        header_line = reader.line_num
        if len(set(columns)) != len(columns):
            dup = next(c for c in columns if columns.count(c) > 1)
            raise DataError(f"{name} line {header_line}: column {dup!r} appears twice in the header")
        for col in REQUIRED_COLUMNS:
            if col not in columns:
                raise DataError(f"{name}: missing required column {col!r} (header has: {', '.join(columns)})")
        for values in reader:
            if not values or not any(v.strip() for v in values):
                continue
            if len(values) != len(columns):
                raise DataError(f"{name} line {reader.line_num}: row has {len(values)} fields but the header has "
                                f"{len(columns)}")
            yield reader.line_num, dict(zip(columns, values, strict=True))
    except csv.Error as exc:
        raise DataError(f"{name} line {reader.line_num}: not valid CSV ({exc})") from None


def _rows_from_jsonl(name: str, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    any_line = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        any_line = True
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{name} line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name} line {number}: expected a JSON object, got {type(obj).__name__}")
        for key in REQUIRED_COLUMNS:
            if key not in obj:
                raise DataError(f"{name} line {number}: missing required key {key!r}")
        yield number, obj
    if not any_line:
        raise DataError(f"{name}: captions file is empty")


def _normalise_path(name: str, line: int, raw: str) -> str:
    if not raw:
        raise DataError(f"{name} line {line}: empty path")
    if os.path.isabs(raw) or raw.startswith(("/", "\\")):
        raise DataError(f"{name} line {line}: path {raw!r} is absolute; paths must be relative to the dataset root")
    # Lexical check on purpose: a file inside root may be a symlink into a cache (DVC) and that is fine.
    norm = os.path.normpath(raw)
    if norm == os.curdir:
        raise DataError(f"{name} line {line}: path {raw!r} is the dataset root itself, not a video")
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise DataError(f"{name} line {line}: path {raw!r} points outside the dataset root")
    return Path(norm).as_posix()


def read_captions(path: str | os.PathLike[str], root: Path, *, check_files: bool = True) -> list[CaptionRow]:
    """Parse and check a captions file (CSV with header, or JSONL); see the module docstring."""
    path = Path(path)
    name = path.name
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{name}: captions file is empty")
    suffix = path.suffix.lower()
    is_jsonl = suffix in (".jsonl", ".ndjson", ".json") or (suffix != ".csv" and text.lstrip().startswith("{"))
    raw_rows = _rows_from_jsonl(name, text) if is_jsonl else _rows_from_csv(name, text)
    rows: list[CaptionRow] = []
    seen: dict[str, int] = {}
    for line, raw in raw_rows:
        raw_path = raw.get("path")
        if not isinstance(raw_path, str):
            raise DataError(f"{name} line {line}: path must be a string, got {raw_path!r}")
        rel = _normalise_path(name, line, raw_path.strip())
        caption = raw.get("caption")
        if caption is None and is_jsonl:
            caption = ""
        if not isinstance(caption, str):
            raise DataError(f"{name} line {line}: caption must be a string, got {caption!r}")
        split = _cell(raw.get("split")) or None
        if split is not None and split not in SPLITS:
            raise DataError(f"{name} line {line}: split {split!r} is not one of {', '.join(SPLITS)}")
        subject = _cell(raw.get("subject")) or None
        if rel in seen:
            raise DataError(f"{name} line {line}: duplicate path {raw_path!r} (first on line {seen[rel]})")
        seen[rel] = line
        if check_files and not (root / rel).exists():
            raise DataError(f"{name} line {line}: {raw_path!r} does not exist under {root}")
        extra = {str(k): _cell(v) or "" for k, v in raw.items()
                 if k not in ("path", "caption", "split", "subject") and k is not None}
        rows.append(CaptionRow(line, rel, caption.strip(), split, subject, extra))
    if not rows:
        raise DataError(f"{name}: captions file has no rows")
    return rows


def _find_captions(captions: str | os.PathLike[str], root: Path) -> Path:
    if captions is None or str(captions) == "":
        raise ConfigError("folder: option 'captions' is required (a CSV or JSONL file)")
    given = Path(captions).expanduser()
    candidates = [given] if given.is_absolute() else [given, root / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = " or ".join(str(c) for c in candidates)
    raise DataError(f"{captions}: captions file not found (looked for {tried})")


# ------------------------------------------------------------------------------------ the source


class FolderSource:
    """Videos (any format `read_video` reads, or frame folders) listed in a captions file.

    Clip ids are `folder/<path>` (the normalised path from the captions file). Provenance: `path`,
    `frame_indices`, `original_size`, `fps`, `captions_line`. Labels: `subject` when given, plus any
    extra columns. Clips come in the captions file's order.
    """

    name = "folder"

    def __init__(self, spec: ClipSpec, root: str | os.PathLike[str], captions: str | os.PathLike[str],
                 default_split: str = "train", val_fraction: float = 0.0, test_fraction: float = 0.0,
                 seed: int = 0, skip_short: bool = False) -> None:
        self.spec = check_spec(spec)
        self.root = check_root(root, "folder")
        self.default_split = check_split(default_split, "default_split")
        self.val_fraction, self.test_fraction = check_fractions(val_fraction, test_fraction)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.skip_short = bool(skip_short)
        self.captions = _find_captions(captions, self.root)
        self.rows = read_captions(self.captions, self.root)
        self.splits = [self._split_of(row) for row in self.rows]

    @classmethod
    def options_help(cls) -> dict[str, str]:
        return {
            "root": "dataset folder; every path in the captions file is relative to it",
            "captions": "CSV (with header) or JSONL file with path, caption and optional split, subject "
                        "(absolute, relative to the working directory, or relative to root)",
            "default_split": "split for rows without one that the hash does not send to val/test (default train)",
            "val_fraction": "share of split-less rows (by subject, else path) sent to val (default 0)",
            "test_fraction": "share of split-less rows (by subject, else path) sent to test (default 0)",
            "seed": "seed of the stable hash that assigns splits (default 0)",
            "skip_short": "skip videos too short for the clip spec with a warning instead of failing (default false)",
        }

    def _split_of(self, row: CaptionRow) -> str:
        if row.split is not None:
            return row.split
        key = f"subject:{row.subject}" if row.subject is not None else f"path:{row.path}"
        return hashed_split(key, val_fraction=self.val_fraction, test_fraction=self.test_fraction, seed=self.seed,
                            default=self.default_split)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Clip]:
        for row, split in zip(self.rows, self.splits, strict=True):
            clip = self._clip(row, split)
            if clip is not None:
                yield clip

    def _clip(self, row: CaptionRow, split: str) -> Clip | None:
        # Stride sampling only ever uses the first frames: do not decode the rest.
        video = read_video(self.root / row.path, max_frames=frames_needed(self.spec))
        where = f"{self.captions.name} line {row.line}: {row.path}"
        try:
            idx = clip_indices(len(video.frames), self.spec)
        except ClipTooShortError as exc:
            too_short(where, exc, self.skip_short)
            return None
        info = video.info
        labels: dict[str, Any] = dict(row.extra)
        if row.subject is not None:
            labels["subject"] = row.subject
        return Clip(
            id=f"folder/{row.path}",
            frames=finish_frames(video.frames[idx], self.spec),
            caption=row.caption,
            split=split,
            source=self.name,
            provenance={"path": row.path, "frame_indices": idx, "original_size": [info.height, info.width],
                        "fps": float(info.fps), "captions_line": row.line},
            labels=labels,
        )

