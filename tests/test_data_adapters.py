"""Dataset adapters (BAIR, UTD-MHAD, NATOPS), the TFRecord reader and the source registry.

Each layout is mimicked by a tiny fake tree in tmp_path; the real BAIR frames (and the real first frames of
MHAD/NATOPS) from ../shared/data/real are used where present.
"""

from __future__ import annotations

import inspect
import shutil
import struct
from pathlib import Path

import av
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dvdm.data.bair import BairSource
from dvdm.data.base import ClipSpec
from dvdm.data.mhad import MHAD_CLASSES, MhadSource
from dvdm.data.natops import NATOPS_CLASSES, NatopsSource, parse_segmentation
from dvdm.data.registry import SOURCES, build_source, options_help, source_names
from dvdm.data.tfrecord import (
    crc32c,
    encode_example,
    iter_records,
    masked_crc32c,
    parse_example,
    read_examples,
    write_records,
    write_tfrecord,
)
from dvdm.errors import ConfigError, DataError
from dvdm.video import read_video, write_frames


def _write_avi(path: Path, frames: np.ndarray, fps: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 20_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _means(frames: np.ndarray) -> list[float]:
    return [float(f.mean()) for f in frames]


# ============================================================================================== tfrecord


def test_crc32c_known_values() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert crc32c(b"") == 0
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283  # continuation
    assert masked_crc32c(b"") == 0xA282EAD8


def test_example_encoding_matches_protobuf_bytes() -> None:
    # Example{features{feature{key: "a" value{int64_list{value: [1]}}}}}, as protobuf serializes it.
    expected = bytes([0x0A, 0x0C, 0x0A, 0x0A, 0x0A, 0x01, 0x61, 0x12, 0x05, 0x1A, 0x03, 0x0A, 0x01, 0x01])
    assert encode_example({"a": [1]}) == expected
    assert parse_example(expected) == {"a": [1]}


def test_example_round_trip_and_unpacked_lists() -> None:
    features = {"img": b"\x00\x01\x02", "two": [b"x", b"yz"], "ints": [0, 5, -3, 2**40], "floats": [0.5, -1.25]}
    assert parse_example(encode_example(features)) == {"img": [b"\x00\x01\x02"], "two": [b"x", b"yz"],
                                                       "ints": [0, 5, -3, 2**40], "floats": [0.5, -1.25]}

    def field(number: int, wire: int, payload: bytes) -> bytes:
        return bytes([(number << 3) | wire]) + (bytes([len(payload)]) + payload if wire == 2 else payload)

    # Unpacked float (wire type 5) and int64 (wire type 0) values, as older writers produce.
    floats = field(2, 2, field(1, 5, struct.pack("<f", 2.0)) + field(1, 5, struct.pack("<f", 3.0)))
    ints = field(3, 2, field(1, 0, b"\x07") + field(1, 0, b"\x08"))
    entry_f = field(1, 2, field(1, 2, b"f") + field(2, 2, floats))
    entry_i = field(1, 2, field(1, 2, b"i") + field(2, 2, ints))
    assert parse_example(field(1, 2, entry_f + entry_i)) == {"f": [2.0, 3.0], "i": [7, 8]}


_keys = st.text(min_size=1, max_size=12)
_values = st.one_of(
    st.lists(st.binary(max_size=40), max_size=4),
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=6),
    st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=6),
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=5))
def test_example_round_trip_property(features: dict) -> None:
    assert parse_example(encode_example(features)) == features


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_crc32c_continues_across_chunks(data: bytes, cut: int) -> None:
    assert crc32c(data[cut:], crc32c(data[:cut])) == crc32c(data)


def test_records_round_trip_and_corruption(tmp_path: Path) -> None:
    path = tmp_path / "x.tfrecords"
    write_records(path, [b"hello", b"", b"world" * 100])
    assert list(iter_records(path)) == [b"hello", b"", b"world" * 100]
    data = bytearray(path.read_bytes())
    data[12 + 2] ^= 0xFF  # a byte of the first record's data
    (tmp_path / "bad.tfrecords").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad.tfrecords: record 0 data CRC mismatch"):
        list(iter_records(tmp_path / "bad.tfrecords"))
    assert next(iter_records(tmp_path / "bad.tfrecords", verify=False)) != b"hello"
    (tmp_path / "cut.tfrecords").write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match=r"cut.tfrecords: record 2 is truncated"):
        list(iter_records(tmp_path / "cut.tfrecords"))
    (tmp_path / "junk.tfrecords").write_bytes(b"not a tfrecord file at all")
    with pytest.raises(DataError, match=r"junk.tfrecords: record 0 has a corrupt length"):
        list(iter_records(tmp_path / "junk.tfrecords"))
    write_records(tmp_path / "notex.tfrecords", [b"\xff\xff"])
    with pytest.raises(DataError, match=r"notex.tfrecords: record 0 is not a valid tf.train.Example"):
        list(read_examples(tmp_path / "notex.tfrecords"))


# ============================================================================================== BAIR


def _bair_frames(seq: int, n: int) -> np.ndarray:
    """Frame t of sequence `seq`: flat value 8*t + seq (so order and identity can be checked)."""
    values = (np.arange(n) * 8 + seq).astype(np.uint8)
    return np.repeat(values[:, None, None, None], 64 * 64 * 3).reshape(n, 64, 64, 3)


def _bair_example(seq: int, n: int) -> dict:
    frames = _bair_frames(seq, n)
    ex: dict = {}
    for t in range(n):
        ex[f"{t}/image_aux1/encoded"] = frames[t].tobytes()
        ex[f"{t}/image_main/encoded"] = bytes(64 * 64 * 3)
        ex[f"{t}/action"] = [0.1 * t, -0.2]
        ex[f"{t}/endeffector_pos"] = [0.0, 1.0, 2.0]
    return ex


def test_bair_tfrecord_layout(tmp_path: Path) -> None:
    base = tmp_path / "softmotion30_44k"
    (base / "test").mkdir(parents=True)
    (base / "train").mkdir()
    write_tfrecord(base / "test" / "traj_0_to_255.tfrecords", [_bair_example(1, 18), _bair_example(2, 18)])
    write_tfrecord(base / "train" / "traj_256_to_511.tfrecords", [_bair_example(3, 18)])
    spec = ClipSpec(frames=16, height=64, width=64, sampling="uniform")  # BAIR ignores uniform by default
    clips = list(BairSource(spec, tmp_path))
    assert [(c.id, c.split) for c in clips] == [("bair/train/traj_256_to_511/0", "train"),
                                                ("bair/test/traj_0_to_255/0", "test"),
                                                ("bair/test/traj_0_to_255/1", "test")]
    first = clips[1]
    assert first.caption == "" and first.frames.shape == (16, 64, 64, 3)
    assert np.array_equal(first.frames, _bair_frames(1, 18)[:16])
    assert first.provenance == {"path": "softmotion30_44k/test/traj_0_to_255.tfrecords",
                                "frame_indices": list(range(16)), "original_size": [64, 64], "fps": 0.0,
                                "record": 0}
    only_test = list(BairSource(spec, tmp_path, split="test"))
    assert [c.id for c in only_test] == ["bair/test/traj_0_to_255/0", "bair/test/traj_0_to_255/1"]
    # bair_protocol=False follows the spec: uniform over all 18 frames
    spaced = next(iter(BairSource(ClipSpec(frames=4), tmp_path, split="test", bair_protocol=False)))
    assert spaced.provenance["frame_indices"] == [0, 5, 11, 17]
    # corrupt a byte in the middle of the first record's data -> CRC mismatch
    path = base / "test" / "traj_0_to_255.tfrecords"
    data = bytearray(path.read_bytes())
    data[5000] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"traj_0_to_255.tfrecords: record 0 data CRC mismatch"):
        list(BairSource(spec, tmp_path, split="test"))


def test_bair_tfrecord_bad_content(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    write_tfrecord(tmp_path / "test" / "a.tfrecords", [{"0/image_aux1/encoded": b"\x00" * 100}])
    with pytest.raises(DataError, match=r"record 0 key 0/image_aux1/encoded: 100 bytes is not a raw square RGB"):
        list(BairSource(ClipSpec(frames=2, pad_short=True), tmp_path))
    write_tfrecord(tmp_path / "test" / "a.tfrecords", [{"other": b"x"}])
    with pytest.raises(DataError, match=r"no '0/image_aux1/encoded' feature"):
        list(BairSource(ClipSpec(frames=2), tmp_path))


def _write_seq(folder: Path, frames: np.ndarray, pattern: str) -> None:
    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / pattern.format(t))


def test_bair_split_folders_with_unpadded_names_and_val_carving(tmp_path: Path) -> None:
    for split, seqs in (("train", range(6)), ("test", range(6, 8))):
        for s in seqs:
            _write_seq(tmp_path / split / f"{s:04d}", _bair_frames(s, 12), "{}.png")  # 0.png ... 11.png
    spec = ClipSpec(frames=11, height=32, width=32)
    clips = list(BairSource(spec, tmp_path))
    assert [c.id for c in clips] == [f"bair/train/{s:04d}" for s in range(6)] + ["bair/test/0006", "bair/test/0007"]
    # natural order: 10.png comes after 9.png, not after 1.png
    assert [round(m) for m in _means(clips[0].frames)] == [8 * t for t in range(11)]
    assert clips[0].frames.shape == (11, 32, 32, 3)
    carved = BairSource(spec, tmp_path, val_fraction=0.5)
    splits = {c.id: c.split for c in carved}
    assert {splits[f"bair/train/{s:04d}"] for s in range(6)} == {"train", "val"}
    assert splits["bair/test/0006"] == "test"
    val_only = [c.id for c in BairSource(spec, tmp_path, split="val", val_fraction=0.5)]
    assert val_only == [k for k, v in splits.items() if v == "val"]


def test_bair_svg_processed_data_layout(tmp_path: Path) -> None:
    for split, traj in (("train", "traj_256_to_511"), ("train", "traj_0_to_255"), ("test", "traj_0_to_255")):
        for k in (0, 1):
            _write_seq(tmp_path / "processed_data" / split / traj / str(k), _bair_frames(k, 4), "{}.png")
    clips = list(BairSource(ClipSpec(frames=3), tmp_path))
    assert [c.id for c in clips] == [
        "bair/train/traj_0_to_255/0", "bair/train/traj_0_to_255/1", "bair/train/traj_256_to_511/0",
        "bair/train/traj_256_to_511/1", "bair/test/traj_0_to_255/0", "bair/test/traj_0_to_255/1"]
    assert clips[0].provenance["path"] == "processed_data/train/traj_0_to_255/0"


def test_bair_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no BAIR data found"):
        BairSource(ClipSpec(), tmp_path)
    _write_seq(tmp_path / "seq", _bair_frames(0, 5), "{:03d}.png")
    with pytest.raises(DataError, match=r"seq: .*needs 16 frames"):
        list(BairSource(ClipSpec(), tmp_path))
    assert list(BairSource(ClipSpec(), tmp_path, skip_short=True)) == []
    with pytest.raises(ConfigError, match="split must be one of"):
        BairSource(ClipSpec(), tmp_path, split="dev")


@pytest.mark.real
def test_bair_real_flat_folder(real_data: Path) -> None:
    root = real_data / "bair"
    clips = list(BairSource(ClipSpec(frames=16, height=64, width=64), root))
    assert len(clips) == 8
    assert [c.id for c in clips] == sorted(f"bair/{d.name}" for d in root.iterdir() if d.is_dir())
    for clip in clips:
        assert clip.split == "test" and clip.caption == "" and clip.frames.shape == (16, 64, 64, 3)
        assert clip.provenance["frame_indices"] == list(range(16))
        assert clip.provenance["original_size"] == [64, 64]
    expected = read_video(root / clips[0].provenance["path"]).frames[:16]
    assert np.array_equal(clips[0].frames, expected)  # 64x64 in, 64x64 out: untouched
    assert {c.split for c in BairSource(ClipSpec(), root, split="train")} == {"train"}


# ============================================================================================== MHAD


def _mhad_frames(n: int) -> np.ndarray:
    """640x480: red left of col 156, blue from col 492, a grey ramp (10*t) inside LFDM's crop box."""
    frames = np.zeros((n, 480, 640, 3), np.uint8)
    frames[:, :, :156] = (255, 0, 0)
    frames[:, :, 492:] = (0, 0, 255)
    for t in range(n):
        frames[t, :, 156:492] = 10 * t + 20
    return frames


def test_mhad_native_videos(tmp_path: Path) -> None:
    frames = _mhad_frames(12)
    for name in ("a11_s4_t1", "a1_s1_t2", "a2_s9_t1"):  # subject 9 is in no split
        _write_avi(tmp_path / "RGB" / f"{name}_color.avi", frames, fps=30)
    (tmp_path / "RGB" / "a1_s1_t2_depth.mat").write_bytes(b"")  # other UTD-MHAD files are ignored
    spec = ClipSpec(frames=4, height=32, width=32)
    clips = list(MhadSource(spec, tmp_path))
    assert [(c.id, c.split) for c in clips] == [("mhad/a1_s1_t2", "train"), ("mhad/a11_s4_t1", "test")]
    clip = clips[1]
    assert clip.caption == "draw triangle" == MHAD_CLASSES[10]
    assert clip.labels == {"action": 11, "class_index": 10, "class_name": "draw triangle", "subject": 4, "trial": 1}
    assert clip.provenance == {"path": "RGB/a11_s4_t1_color.avi", "frame_indices": [0, 3, 7, 11],
                               "original_size": [480, 640], "fps": 30.0, "crop": [0, 156, 480, 336]}
    assert clip.frames.shape == (4, 32, 32, 3)
    # inside the crop box only: no red/blue columns, the grey ramp of the chosen frames
    assert np.allclose(_means(clip.frames), [20, 50, 90, 130], atol=3)
    assert np.abs(clip.frames.astype(int)[..., 0] - clip.frames.astype(int)[..., 2]).max() <= 6
    uncropped = next(iter(MhadSource(spec, tmp_path, crop=False)))
    assert uncropped.frames[0, :, 0, 0] .min() > 200 and uncropped.frames[0, :, -1, 2].min() > 200
    assert "crop" not in uncropped.provenance
    # flat layout (videos directly under root) and custom subject lists
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(tmp_path / "RGB" / "a2_s9_t1_color.avi", flat)
    (clip,) = MhadSource(spec, flat, train_subjects=[9], test_subjects=[])
    assert (clip.id, clip.split, clip.caption) == ("mhad/a2_s9_t1", "train", "right arm swipe to the right")


def test_mhad_crop_image_layout(tmp_path: Path, real_data: Path) -> None:
    first = np.asarray(Image.open(real_data / "utd_mhad" / "a11_s4_t1_000.png").convert("RGB"))
    assert first.shape == (480, 336, 3)
    folder = tmp_path / "crop_image" / "a11_s4_t1"
    folder.mkdir(parents=True)
    for t in range(5):
        Image.fromarray(first).save(folder / f"a11_s4_t1_{t:03d}.png")
    (clip,) = MhadSource(ClipSpec(frames=4, height=64, width=64), tmp_path)
    assert (clip.id, clip.split, clip.caption) == ("mhad/a11_s4_t1", "test", "draw triangle")
    assert clip.provenance["original_size"] == [480, 336] and "crop" not in clip.provenance
    assert clip.provenance["fps"] == 30.0 and clip.provenance["frame_indices"] == [0, 1, 2, 4]
    assert clip.frames.shape == (4, 64, 64, 3)


def test_mhad_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no UTD-MHAD data found"):
        MhadSource(ClipSpec(), tmp_path)
    (tmp_path / "a28_s1_t1_color.avi").write_bytes(b"x")
    with pytest.raises(DataError, match=r"a28_s1_t1_color.avi: action 28 is not a UTD-MHAD action \(1-27\)"):
        MhadSource(ClipSpec(), tmp_path)
    (tmp_path / "a28_s1_t1_color.avi").unlink()
    _write_avi(tmp_path / "a3_s1_t1_color.avi", _mhad_frames(3), fps=30)
    with pytest.raises(DataError, match=r"a3_s1_t1_color.avi: .*needs 4 frames"):
        list(MhadSource(ClipSpec(frames=4), tmp_path))
    with pytest.raises(ConfigError, match="subject 4 is in both train_subjects and test_subjects"):
        MhadSource(ClipSpec(), tmp_path, train_subjects=[1, 4])
    with pytest.raises(ConfigError, match="layout must be one of"):
        MhadSource(ClipSpec(), tmp_path, layout="mp4")


# ============================================================================================== NATOPS

SEGMENTATION = """\
// NATOPS gesture segmentation (reduced for tests)
// Subject 1
1,1,2
1:1,8
2:9,16
// Subject 2
2,1,2
1:2,9
2:12,20
2,3,2
1:1,10
2:11,20
// Subject 3
3,1,2
1:1,6
2:7,14
"""


def _natops_frames(n: int) -> np.ndarray:
    """320x240: red border outside LFDM's box, a grey ramp (8*t + 8) inside rows 10:239, cols 30:290."""
    frames = np.zeros((n, 240, 320, 3), np.uint8)
    frames[:] = (255, 0, 0)
    for t in range(n):
        frames[t, 10:239, 30:290] = 8 * t + 8
    return frames


@pytest.fixture
def natops_root(tmp_path: Path) -> Path:
    frames = _natops_frames(20)
    for g, s in ((1, 1), (1, 2), (3, 2), (1, 3)):
        _write_avi(tmp_path / f"gesture{g:02d}" / f"g{g:02d}s{s:02d}.avi", frames, fps=20)
    (tmp_path / "gesture01" / "g01S02m.avi").write_bytes(b"mask video, ignored")
    (tmp_path / "segmentation.txt").write_text(SEGMENTATION)
    return tmp_path


def test_natops_cuts_repetitions(natops_root: Path) -> None:
    spec = ClipSpec(frames=4, height=32, width=32)
    clips = list(NatopsSource(spec, natops_root))
    assert [(c.id, c.split) for c in clips] == [
        ("natops/g01s02p01", "test"), ("natops/g01s02p02", "test"), ("natops/g01s03p01", "train"),
        ("natops/g01s03p02", "train"), ("natops/g03s02p01", "test"), ("natops/g03s02p02", "test")]
    clip = clips[1]  # subject 2, gesture 1, repetition 2: frames 12..20 (1-based) = indices 11..19
    assert clip.caption == "I Have Command"
    assert clip.labels == {"gesture": 1, "class_index": 0, "class_name": "I Have Command", "subject": 2,
                           "repetition": 2}
    assert clip.provenance == {"path": "gesture01/g01s02.avi", "frame_indices": [11, 13, 16, 19],
                               "original_size": [240, 320], "fps": 20.0, "crop": [10, 30, 229, 260],
                               "segment": [12, 20]}
    assert np.allclose(_means(clip.frames), [8 * i + 8 for i in (11, 13, 16, 19)], atol=3)
    # No red border inside (MPEG-4 bleeds a little colour into the outermost rows; the exact box is checked
    # losslessly in test_natops_lfdm_frame_folders).
    assert np.abs(clip.frames.astype(int)[:, 1:-1, :, 0] - clip.frames.astype(int)[:, 1:-1, :, 1]).max() <= 6
    assert clips[4].caption == NATOPS_CLASSES[2] == "Not Clear"
    uncropped = next(iter(NatopsSource(spec, natops_root, crop=False)))
    assert uncropped.frames[0, 0, :, 0].min() > 200 and "crop" not in uncropped.provenance


def test_natops_segment_past_the_end_of_the_video(natops_root: Path) -> None:
    (natops_root / "segmentation.txt").write_text(SEGMENTATION.replace("2:12,20", "2:12,25"))
    with pytest.raises(DataError, match=r"gesture01/g01s02.avi: has 20 frames but segmentation.txt line 9 ends "
                                        r"repetition 2 at frame 25"):
        list(NatopsSource(ClipSpec(frames=4), natops_root))


def test_natops_missing_segmentation_and_short_repetitions(natops_root: Path) -> None:
    with pytest.raises(DataError, match=r"nope.txt: segmentation file not found"):
        NatopsSource(ClipSpec(frames=4), natops_root, segmentation=natops_root / "nope.txt")
    with pytest.raises(DataError, match=r"g01s02.avi repetition 1 \(frames 2-9\): .*needs 9 frames"):
        list(NatopsSource(ClipSpec(frames=9), natops_root))
    kept = [c.id for c in NatopsSource(ClipSpec(frames=9), natops_root, skip_short=True)]
    assert kept == ["natops/g01s02p01", "natops/g01s02p02"][1:] + ["natops/g03s02p01", "natops/g03s02p02"]


def test_parse_segmentation_keys_and_fallbacks(tmp_path: Path) -> None:
    path = tmp_path / "segmentation.txt"
    path.write_text(SEGMENTATION)
    seg = parse_segmentation(path)
    assert sorted(seg) == [(1, 1), (2, 1), (2, 3), (3, 1)]
    assert [(s.repetition, s.start, s.end, s.line) for s in seg[(2, 3)]] == [(1, 1, 10, 11), (2, 11, 20, 12)]
    # LFDM's reading: subjects and gestures numbered by their order when the headers do not say
    path.write_text("// Subject\n9,9,1\n1:1,5\n0,0,1\n1 : 6 , 9\n// Subject\n,,\n")
    with pytest.raises(DataError, match=r"line 7: cannot parse ',,'"):
        parse_segmentation(path)
    path.write_text("// Subject\n9,9,1\n1:1,5\n0,0,1\n1 : 6 , 9\n// Subject\n7,7,1\n1:2,3\n")
    assert sorted(parse_segmentation(path)) == [(1, 1), (1, 2), (2, 1)]
    path.write_text("// Subject: 12\n12,4,1\n1:1,5\n")
    assert sorted(parse_segmentation(path)) == [(12, 4)]
    path.write_text("// Subject\n9,9,1\n1:1,5\n0,0,1\n1 : 6 , 9\n// Subject\n7,7,1\n1:2,3\n")
    seg = parse_segmentation(path)
    assert sorted(seg) == [(1, 1), (1, 2), (2, 1)]
    assert seg[(1, 2)][0].start == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1,1,1\n1:1,5\n", r"segmentation.txt line 1: gesture block '1,1,1' before any '// Subject' line"),
        ("// Subject 1\n1:1,5\n", r"segmentation.txt line 2: repetition '1:1,5' outside a gesture block"),
        ("// Subject 1\n1,1,1\n1:9,5\n", r"segmentation.txt line 3: bad frame range 9,5"),
        ("// Subject 1\n1,1,1\n1:0,5\n", r"line 3: bad frame range 0,5"),
        ("// Subject 1\n1,1,1\n1:1\n", r"segmentation.txt line 3: cannot parse '1:1'"),
        ("// Subject 1\n1,1,1\n1:1,5\n// Subject 1\n", r"line 4: subject 1 appears twice \(first on line 1\)"),
        ("// Subject 1\n1,1,1\n1:1,5\n1,1,1\n", r"line 4: subject 1 gesture 1 appears twice"),
        ("// Subject 1\n1,1,1\n", r"subject 1 gesture 1 has no repetitions"),
        ("just some text\n", r"no gesture blocks found"),
    ],
)
def test_malformed_segmentation(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "segmentation.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        parse_segmentation(path)


def test_natops_video_without_segments(natops_root: Path) -> None:
    _write_avi(natops_root / "gesture05" / "g05s03.avi", _natops_frames(2), fps=20)
    with pytest.raises(DataError, match=r"gesture05/g05s03.avi: segmentation.txt has no repetitions for subject 3 "
                                        r"gesture 5"):
        list(NatopsSource(ClipSpec(frames=2), natops_root))


def test_natops_lfdm_frame_folders(tmp_path: Path, real_data: Path) -> None:
    first = Image.open(real_data / "natops" / "g01s10p01-0000-0055.png").convert("RGB")
    assert first.size == (320, 240)
    folder = tmp_path / "split_img_data" / "g01s10p01"
    folder.mkdir(parents=True)
    for c in range(6):
        first.save(folder / f"g01s10p01-{c:04d}-{55 + c:04d}.png")
    (clip,) = NatopsSource(ClipSpec(frames=4, height=64, width=64), tmp_path)
    assert (clip.id, clip.split, clip.caption) == ("natops/g01s10p01", "test", "I Have Command")
    assert clip.provenance["frame_indices"] == [55, 56, 58, 60]  # original video frames, from the names
    assert clip.provenance["crop"] == [10, 30, 229, 260] and clip.provenance["fps"] == 20.0
    assert clip.frames.shape == (4, 64, 64, 3)
    # Lossless frames with a red border exactly outside frame[10:239, 30:290]: the crop keeps none of it.
    write_frames(tmp_path / "split_img_data" / "g02s03p04", _natops_frames(5))
    clips = list(NatopsSource(ClipSpec(frames=5, height=229, width=260), tmp_path))
    assert [c.id for c in clips] == ["natops/g01s10p01", "natops/g02s03p04"]
    ramp = clips[1].frames
    assert clips[1].split == "train" and clips[1].caption == "All Clear"
    assert np.array_equal(ramp, _natops_frames(5)[:, 10:239, 30:290])
    assert clips[1].provenance["frame_indices"] == [0, 1, 2, 3, 4]  # names without -CCCC-FFFF: folder order


def test_natops_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no NATOPS data found"):
        NatopsSource(ClipSpec(), tmp_path)
    with pytest.raises(ConfigError, match="subject 3 is in both train_subjects and val_subjects"):
        NatopsSource(ClipSpec(), tmp_path, val_subjects=[3])


# ============================================================================================== registry


def test_registry_builds_sources(tmp_path: Path) -> None:
    _write_seq(tmp_path / "seq", _bair_frames(0, 3), "{:03d}.png")
    src = build_source("bair", ClipSpec(frames=2), {"root": str(tmp_path), "split": "val"})
    assert isinstance(src, BairSource)
    assert [c.split for c in src] == ["val"]
    assert {"folder", "bair", "mhad", "natops"} <= set(SOURCES)
    assert {"folder", "bair", "mhad", "natops"} <= set(source_names())


def test_registry_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown data source 'kinetics'; known sources: bair, folder, mhad"):
        build_source("kinetics", ClipSpec(), {})
    with pytest.raises(ConfigError, match=r"source 'bair': unknown option rot; valid options: root, split"):
        build_source("bair", ClipSpec(), {"rot": "x"})
    with pytest.raises(ConfigError, match=r"source 'folder': missing required options root, captions"):
        build_source("folder", ClipSpec(), {})
    with pytest.raises(ConfigError, match=r"spec must be a ClipSpec"):
        build_source("bair", {"frames": 16}, {"root": str(tmp_path)})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["folder", "bair", "mhad", "natops"])
def test_options_help_describes_every_option(name: str) -> None:
    params = [p for p in inspect.signature(SOURCES[name]).parameters if p != "spec"]
    described = SOURCES[name].options_help()
    assert sorted(described) == sorted(params)
    assert all(isinstance(v, str) and v for v in described.values())
    assert options_help(name) == described
    assert SOURCES[name].name == name


def test_synthetic_is_built_lazily_when_present() -> None:
    if "synthetic" not in source_names():
        pytest.skip("dvdm.data.synthetic is not there yet")
    src = build_source("synthetic", ClipSpec(frames=4, height=16, width=16), {"num_train": 1, "num_val": 0,
                                                                                 "num_test": 0})
    assert src.name == "synthetic"
