"""FolderSource: a folder of videos + a captions file (CSV or JSONL), its splits and every bad input."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dvdm.data.base import ClipSpec
from dvdm.data.folder import FolderSource, hashed_split, read_captions, stable_unit
from dvdm.errors import ConfigError, DataError, VideoError
from dvdm.video import write_frames, write_mp4

SPEC = ClipSpec(frames=4, height=16, width=16)


def _ramp(n: int, h: int = 24, w: int = 32) -> np.ndarray:
    """Frame i is a flat grey of value 10*i: which frames a clip took can be read back from its means."""
    return np.repeat((np.arange(n, dtype=np.uint8) * 10)[:, None, None, None], h * w * 3).reshape(n, h, w, 3)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    write_mp4(root / "clips" / "a.mp4", _ramp(12), fps=10)
    write_frames(root / "clips" / "b", _ramp(9))
    write_frames(root / "short", _ramp(3))
    return root


def _csv(root: Path, text: str, name: str = "captions.csv") -> Path:
    path = root / name
    path.write_text(text)
    return path


def test_csv_yields_resized_clips_in_file_order(tree: Path) -> None:
    captions = _csv(tree, "path,caption,split,subject,camera\n"
                          "clips/a.mp4,a cat jumps,test,s1,front\n"
                          "clips/b,\"a dog, running\",,s2,side\n")
    clips = list(FolderSource(SPEC, tree, captions))
    assert [c.id for c in clips] == ["folder/clips/a.mp4", "folder/clips/b"]
    a, b = clips
    assert a.frames.shape == (4, 16, 16, 3) and a.frames.dtype == np.uint8
    assert (a.caption, a.split, a.source) == ("a cat jumps", "test", "folder")
    assert b.caption == "a dog, running" and b.split == "train"  # no split, fractions 0 -> default_split
    assert a.labels == {"subject": "s1", "camera": "front"}
    assert a.provenance["path"] == "clips/a.mp4"
    assert a.provenance["frame_indices"] == [0, 3, 7, 11]  # uniform over 12 frames
    assert a.provenance["original_size"] == [24, 32]
    assert a.provenance["fps"] == pytest.approx(10.0)
    assert b.provenance["frame_indices"] == [0, 2, 5, 8]
    # The frames really are those indices (a flat grey of 10*i, lossless for the PNG folder).
    assert [int(f.mean().round()) for f in b.frames] == [0, 20, 50, 80]
    assert np.allclose([f.mean() for f in a.frames], [0, 30, 70, 110], atol=3)


def test_jsonl_and_stride_sampling(tree: Path) -> None:
    captions = tree / "captions.jsonl"
    captions.write_text(json.dumps({"path": "clips/b", "caption": "b", "split": "val", "subject": 7}) + "\n\n"
                        + json.dumps({"path": "clips/a.mp4", "caption": "a"}) + "\n")
    spec = ClipSpec(frames=3, height=16, width=16, sampling="stride", stride=2, start=1)
    clips = list(FolderSource(spec, tree, captions))
    assert [(c.id, c.split) for c in clips] == [("folder/clips/b", "val"), ("folder/clips/a.mp4", "train")]
    assert clips[0].labels == {"subject": "7"}
    assert clips[0].provenance["frame_indices"] == [1, 3, 5]
    assert clips[1].provenance["frame_indices"] == [1, 3, 5]


def test_captions_path_relative_to_root_and_pad_short(tree: Path) -> None:
    _csv(tree, "path,caption\nshort,tiny\n")
    spec = ClipSpec(frames=4, height=16, width=16, pad_short=True)
    (clip,) = FolderSource(spec, tree, "captions.csv")  # found under root
    assert clip.provenance["frame_indices"] == [0, 1, 2, 2]


def test_short_clip_errors_naming_the_file_or_is_skipped(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    captions = _csv(tree, "path,caption\nclips/b,ok\nshort,tiny\n")
    with pytest.raises(DataError, match=r"captions.csv line 3: short: .*needs 4 frames.*has 3"):
        list(FolderSource(SPEC, tree, captions))
    with caplog.at_level(logging.WARNING, logger="dvdm.data.folder"):
        clips = list(FolderSource(SPEC, tree, captions, skip_short=True))
    assert [c.id for c in clips] == ["folder/clips/b"]
    assert "skipping" in caplog.text and "short" in caplog.text


def test_splits_are_assigned_by_subject_deterministically(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    lines = ["path,caption,subject"]
    for i in range(60):
        (root / f"v{i}.mp4").touch()  # only existence is checked when building; nothing is decoded here
        subject = f"s{i % 12}" if i < 48 else ""
        lines.append(f"v{i}.mp4,c,{subject}")
    captions = _csv(root, "\n".join(lines) + "\n")
    src = FolderSource(SPEC, root, captions, val_fraction=0.25, test_fraction=0.25, seed=3)
    again = FolderSource(SPEC, root, captions, val_fraction=0.25, test_fraction=0.25, seed=3)
    assert src.splits == again.splits
    assert set(src.splits) == {"train", "val", "test"}
    by_subject: dict[str, set[str]] = {}
    for row, split in zip(src.rows, src.splits, strict=True):
        if row.subject:
            by_subject.setdefault(row.subject, set()).add(split)
    assert all(len(s) == 1 for s in by_subject.values())  # no subject straddles splits
    # rows without a subject hash their path
    for row, split in zip(src.rows[48:], src.splits[48:], strict=True):
        assert split == hashed_split(f"path:{row.path}", val_fraction=0.25, test_fraction=0.25, seed=3)
    other = FolderSource(SPEC, root, captions, val_fraction=0.25, test_fraction=0.25, seed=4)
    assert other.splits != src.splits


def test_stable_unit_is_fixed_across_runs() -> None:
    # Regression values (sha256-based, so the same on every machine and Python run): changing the hash
    # would silently move clips between splits.
    assert stable_unit("subject:s1", 0) == pytest.approx(0.6137262249978583, abs=1e-12)
    assert stable_unit("path:a.mp4", 7) == pytest.approx(0.5688591277729322, abs=1e-12)
    assert stable_unit("a", 0) != stable_unit("a", 1)


def test_options_help_covers_every_option() -> None:
    import inspect

    params = [p for p in inspect.signature(FolderSource).parameters if p != "spec"]
    assert sorted(FolderSource.options_help()) == sorted(params)


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"captions.csv: captions file is empty"),
        ("path,caption\n", r"captions.csv: captions file has no rows"),
        ("path,text\nclips/b,x\n", r"captions.csv: missing required column 'caption' \(header has: path, text\)"),
        ("file,caption\nclips/b,x\n", r"missing required column 'path'"),
        ("path,caption\nclips/b,x\n../x.mp4,y\n",
         r"^captions.csv line 3: path '../x.mp4' points outside the dataset root$"),
        ("path,caption\nclips/../../x.mp4,y\n", r"captions.csv line 2: path 'clips/../../x.mp4' points outside"),
        ("path,caption\n/etc/passwd,y\n", r"captions.csv line 2: path '/etc/passwd' is absolute"),
        ("path,caption\nclips/b,x\nclips/nope.mp4,y\n", r"captions.csv line 3: 'clips/nope.mp4' does not exist"),
        ("path,caption,split\nclips/b,x,dev\n", r"captions.csv line 2: split 'dev' is not one of train, val, test"),
        ("path,caption\nclips/b,x\n./clips/b,y\n",
         r"captions.csv line 3: duplicate path './clips/b' \(first on line 2\)"),
        ("path,caption\nclips/b,x,extra\n", r"captions.csv line 2: row has 3 fields but the header has 2"),
        ('path,caption\nclips/b,"unterminated\n', r"captions.csv line \d+: not valid CSV"),
        ("path,caption,path\nclips/b,x,y\n", r"column 'path' appears twice"),
        ("path,caption\n,x\n", r"captions.csv line 2: empty path"),
    ],
)
def test_bad_csv_is_a_one_line_data_error(tree: Path, text: str, message: str) -> None:
    captions = _csv(tree, text)
    with pytest.raises(DataError, match=message) as info:
        FolderSource(SPEC, tree, captions)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"path": "clips/b", "caption": "x"}', "{not json"], r"captions.jsonl line 2: not valid JSON"),
        (['["clips/b", "x"]'], r"captions.jsonl line 1: expected a JSON object, got list"),
        (['{"path": "clips/b"}'], r"captions.jsonl line 1: missing required key 'caption'"),
        (['{"path": 3, "caption": "x"}'], r"captions.jsonl line 1: path must be a string"),
        (['{"path": "clips/b", "caption": 5}'], r"captions.jsonl line 1: caption must be a string"),
        (['{"path": "../b", "caption": "x"}'], r"captions.jsonl line 1: path '../b' points outside the dataset root"),
        (["", "  "], r"captions.jsonl: captions file is empty"),
    ],
)
def test_bad_jsonl_is_a_data_error(tree: Path, lines: list[str], message: str) -> None:
    captions = tree / "captions.jsonl"
    captions.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        FolderSource(SPEC, tree, captions)


def test_missing_captions_file_and_root(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.csv: captions file not found"):
        FolderSource(SPEC, tree, "nope.csv")
    with pytest.raises(DataError, match="dataset root does not exist"):
        FolderSource(SPEC, tmp_path / "missing", "c.csv")
    captions = _csv(tree, "path,caption\nclips/b,x\n")
    with pytest.raises(DataError, match="is not a folder"):
        FolderSource(SPEC, captions, captions)


def test_not_utf8_captions(tree: Path) -> None:
    captions = tree / "captions.csv"
    captions.write_bytes(b"path,caption\nclips/b,\xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8"):
        FolderSource(SPEC, tree, captions)


def test_mixed_size_frame_folder_error_names_the_folder(tree: Path) -> None:
    folder = tree / "mixed"
    write_frames(folder, _ramp(4))
    Image.new("RGB", (8, 8)).save(folder / "999999.png")
    captions = _csv(tree, "path,caption\nmixed,x\n")
    src = FolderSource(SPEC, tree, captions)  # building only checks existence
    with pytest.raises(VideoError, match=r"mixed/?: frame 999999.png is 8x8 .*mixed sizes"):
        list(src)


def test_unreadable_video_error_names_the_file(tree: Path) -> None:
    (tree / "broken.mp4").write_bytes(b"this is not a video")
    captions = _csv(tree, "path,caption\nbroken.mp4,x\n")
    with pytest.raises(VideoError, match="broken.mp4"):
        list(FolderSource(SPEC, tree, captions))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"val_fraction": 1.5}, "val_fraction must be a number in"),
        ({"val_fraction": 0.6, "test_fraction": 0.6}, "val_fraction \\+ test_fraction must be <= 1"),
        ({"default_split": "dev"}, "default_split must be one of"),
        ({"seed": "x"}, "seed must be an integer"),
    ],
)
def test_bad_options_are_config_errors(tree: Path, options: dict, message: str) -> None:
    captions = _csv(tree, "path,caption\nclips/b,x\n")
    with pytest.raises(ConfigError, match=message):
        FolderSource(SPEC, tree, captions, **options)


def test_read_captions_can_skip_the_existence_check(tmp_path: Path) -> None:
    captions = _csv(tmp_path, "path,caption\nnot/there.mp4,x\n")
    (row,) = read_captions(captions, tmp_path, check_files=False)
    assert (row.line, row.path, row.caption, row.split) == (2, "not/there.mp4", "x", None)
