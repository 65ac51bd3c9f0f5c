"""`bair`: BAIR robot pushing (Ebert et al. 2017), 64x64, no text.

Layouts found under `root` (the first that matches wins):

1. Raw TFRecords: `root/softmotion30_44k/{train,test}/traj_*.tfrecords` (or `root/{train,test}/*.tfrecords`).
   Read without TensorFlow (`dvdm.data.tfrecord`); frames are the `{t}/image_aux1/encoded` features (raw
   64x64x3 uint8, or PNG/JPEG bytes), CRCs verified. Clip ids `bair/<split>/<file stem>/<record index>`.
2. Frame folders by split: `root/processed_data/{train,test}/traj_<a>_to_<b>/<k>/<t>.png` (Denton's SVG
   converter), the same without `processed_data`, or `root/{train,test}/<seq>/` with `0.png, 1.png, ...` or
   `000.png, ...`. Every folder holding images is a sequence. Clip ids `bair/<split>/<relative folder>`.
3. A flat folder of sequence folders (e.g. `bair_00026/000.png ... 029.png`): every sequence goes to the split
   named by `split` (default `test`). Clip ids `bair/<folder>`.

Temporal sampling: by default (`bair_protocol=True`) a clip is the FIRST `spec.frames` consecutive frames
(stride 1 from frame 0), which is the BAIR benchmark protocol (1 given + 15 predicted frames at 64x64),
whatever `spec.sampling`, `stride` and `start` say. Set `bair_protocol=False` to sample as the spec says.

`split`: with split folders, yield only that split (None: all); with a flat folder, the split to assign
(None: `test`). `val_fraction` moves a stable-hashed share of the train sequences to `val`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dvdm.data.base import SPLITS, Clip, ClipSpec
from dvdm.data.folder import (
    check_fractions,
    check_root,
    check_spec,
    clip_indices,
    finish_frames,
    frames_needed,
    hashed_split,
    natural_key,
    too_short,
)
from dvdm.data.tfrecord import read_examples
from dvdm.errors import ClipTooShortError, ConfigError, DataError
from dvdm.video import SUPPORTED_IMAGE_EXTENSIONS, read_video

_SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_TFRECORD_SUFFIXES = (".tfrecords", ".tfrecord")


def _has_images(folder: Path) -> bool:
    return any(f.suffix.lower() in SUPPORTED_IMAGE_EXTENSIONS and f.is_file() and not f.name.startswith(".")
               for f in folder.iterdir())


def _sequence_dirs(base: Path) -> list[Path]:
    """Every folder under `base` (itself included) that holds images, in natural order."""
    found: list[Path] = []

    def walk(folder: Path) -> None:
        if _has_images(folder):
            found.append(folder)
            return
        subdirs = [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]
        for d in sorted(subdirs, key=lambda d: natural_key(d.name)):
            walk(d)

    walk(base)
    return found


@dataclass(frozen=True)
class _Sequence:
    id: str
    split: str  # the split folder it came from ("train"/"val"/"test")
    path: Path
    record: int | None = None  # index inside a TFRecord file


def _split_folders(base: Path) -> dict[str, Path]:
    found = {}
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if d.is_dir() and d.name.lower() in _SPLIT_DIRS:
            found.setdefault(_SPLIT_DIRS[d.name.lower()], d)
    return found


def _tfrecord_files(folder: Path) -> list[Path]:
    return sorted((f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(_TFRECORD_SUFFIXES)),
                  key=lambda f: natural_key(f.name))


class BairSource:
    """BAIR robot pushing sequences as unconditional (caption "") clips; see the module docstring.

    Provenance: `path` (file or folder relative to root), `frame_indices`, `original_size`, `fps` (0.0:
    BAIR frames carry no frame rate), `record` for TFRecords. Labels: `sequence` (the id without `bair/`).
    """

    name = "bair"

    def __init__(self, spec: ClipSpec, root: str | os.PathLike[str], split: str | None = None,
                 val_fraction: float = 0.0, seed: int = 0, bair_protocol: bool = True,
                 image_key: str = "image_aux1", verify_crc: bool = True, skip_short: bool = False) -> None:
        self.spec = check_spec(spec)
        self.root = check_root(root, "bair")
        if split is not None and split not in SPLITS:
            raise ConfigError(f"bair: split must be one of {', '.join(SPLITS)} or null, got {split!r}")
        self.split = split
        self.val_fraction, _ = check_fractions(val_fraction)
        self.seed = int(seed)
        self.bair_protocol = bool(bair_protocol)
        if not isinstance(image_key, str) or not image_key:
            raise ConfigError(f"bair: image_key must be a non-empty string, got {image_key!r}")
        self.image_key = image_key
        self.verify_crc = bool(verify_crc)
        self.skip_short = bool(skip_short)
        self.layout, self.sequences = self._discover()

    @classmethod
    def options_help(cls) -> dict[str, str]:
        return {
            "root": "BAIR folder: softmotion30_44k TFRecords, SVG's processed_data frame folders, "
                    "{train,test}/<seq>/ frame folders, or a flat folder of sequence folders",
            "split": "with split folders: only this split (default: all); with a flat folder: the split "
                     "to assign (default test)",
            "val_fraction": "share of train sequences moved to val by a stable hash (default 0)",
            "seed": "seed of that hash (default 0)",
            "bair_protocol": "take the first `frames` consecutive frames (BAIR protocol) instead of the "
                             "spec's sampling (default true)",
            "image_key": "TFRecord camera feature: {t}/<image_key>/encoded (default image_aux1)",
            "verify_crc": "check TFRecord CRCs (default true)",
            "skip_short": "skip sequences shorter than the clip with a warning instead of failing (default false)",
        }

    # ------------------------------------------------------------------ discovery

    def _discover(self) -> tuple[str, list[_Sequence]]:
        root = self.root
        for base in (root / "softmotion30_44k", root):
            splits = _split_folders(base)
            files = {s: _tfrecord_files(d) for s, d in splits.items()}
            if any(files.values()):
                seqs = []
                for split in SPLITS:
                    for f in files.get(split, []):
                        # Records are counted lazily at iteration; the id needs only file + index.
                        seqs.append(_Sequence(id=f"{split}/{f.stem}", split=split, path=f))
                return "tfrecord", seqs
        for base in (root / "processed_data", root):
            splits = _split_folders(base)
            if splits:
                seqs = []
                for split in SPLITS:
                    if split in splits:
                        for d in _sequence_dirs(splits[split]):
                            rel = d.relative_to(base).as_posix()
                            seqs.append(_Sequence(id=rel, split=split, path=d))
                if seqs:
                    return "split_folders", seqs
        seqs = [_Sequence(id=d.relative_to(root).as_posix(), split=self.split or "test", path=d)
                for d in _sequence_dirs(root) if d != root]
        if not seqs and _has_images(root):
            seqs = [_Sequence(id=root.name, split=self.split or "test", path=root)]
        if not seqs:
            raise DataError(f"{root}: no BAIR data found (expected softmotion30_44k/{{train,test}}/*.tfrecords, "
                            f"processed_data/{{train,test}}/..., {{train,test}}/<seq>/*.png or <seq>/*.png)")
        return "flat", seqs

    # ------------------------------------------------------------------ iteration

    def _final_split(self, seq_id: str, split: str) -> str:
        if split == "train" and self.val_fraction > 0:
            return hashed_split(seq_id, val_fraction=self.val_fraction, seed=self.seed, default="train")
        return split

    def _may_contain(self, folder_split: str) -> bool:
        """Can a sequence from this split folder end up in the wanted split? (val is carved from train.)"""
        if self.layout == "flat" or self.split is None or folder_split == self.split:
            return True
        return self.split == "val" and folder_split == "train"

    def _wanted(self, split: str) -> bool:
        return self.layout == "flat" or self.split is None or split == self.split

    def __iter__(self) -> Iterator[Clip]:
        for seq in self.sequences:
            if not self._may_contain(seq.split):
                continue
            if self.layout == "tfrecord":
                yield from self._tfrecord_clips(seq)
            else:
                split = self._final_split(seq.id, seq.split)
                if not self._wanted(split):
                    continue
                clip = self._folder_clip(seq, split)
                if clip is not None:
                    yield clip

    def _indices(self, n_total: int, where: str) -> list[int] | None:
        try:
            return clip_indices(n_total, self.spec, force_start=self.bair_protocol)
        except ClipTooShortError as exc:
            too_short(where, exc, self.skip_short)
            return None

    def _make(self, seq_id: str, split: str, frames: np.ndarray, idx: list[int], rel: str,
              original: tuple[int, int], fps: float, extra: dict[str, Any] | None = None) -> Clip:
        provenance = {"path": rel, "frame_indices": idx, "original_size": [int(original[0]), int(original[1])],
                      "fps": float(fps)}
        provenance.update(extra or {})
        return Clip(id=f"bair/{seq_id}", frames=finish_frames(frames, self.spec), caption="", split=split,
                    source=self.name, provenance=provenance, labels={"sequence": seq_id})

    def _folder_clip(self, seq: _Sequence, split: str) -> Clip | None:
        video = read_video(seq.path, max_frames=self.spec.frames if self.bair_protocol else frames_needed(self.spec))
        rel = seq.path.relative_to(self.root).as_posix() or "."
        idx = self._indices(len(video.frames), rel)
        if idx is None:
            return None
        info = video.info
        return self._make(seq.id, split, video.frames[idx], idx, rel, (info.height, info.width), info.fps)

    def _tfrecord_clips(self, seq: _Sequence) -> Iterator[Clip]:
        rel = seq.path.relative_to(self.root).as_posix()
        for record, features in enumerate(read_examples(seq.path, verify=self.verify_crc)):
            seq_id = f"{seq.id}/{record}"
            split = self._final_split(seq_id, seq.split)
            if not self._wanted(split):
                continue
            keys = []
            while f"{len(keys)}/{self.image_key}/encoded" in features:
                keys.append(f"{len(keys)}/{self.image_key}/encoded")
            where = f"{rel} record {record}"
            if not keys:
                raise DataError(f"{where}: no '0/{self.image_key}/encoded' feature (not BAIR data, or set image_key)")
            idx = self._indices(len(keys), where)
            if idx is None:
                continue
            frames = np.stack([_decode_image(features[keys[i]], f"{where} key {keys[i]}") for i in idx])
            if len({f.shape for f in frames}) > 1:
                raise DataError(f"{where}: frames of different sizes")
            yield self._make(seq_id, split, frames, idx, rel, frames.shape[1:3], 0.0, {"record": record})


def _decode_image(values: list, where: str) -> np.ndarray:
    if len(values) != 1 or not isinstance(values[0], bytes):
        raise DataError(f"{where}: expected one bytes value, got {len(values)} values")
    data = values[0]
    if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
        try:
            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{where}: not a readable image ({exc})") from None
    side = int(round((len(data) / 3) ** 0.5))
    if side < 1 or side * side * 3 != len(data):
        raise DataError(f"{where}: {len(data)} bytes is not a raw square RGB image (BAIR frames are 64x64x3 = 12288)")
    return np.frombuffer(data, dtype=np.uint8).reshape(side, side, 3)
