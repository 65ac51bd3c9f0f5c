"""Video I/O: write/read round trips, frame folders, real clips, and every kind of bad input."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from dvdm.errors import ClipTooShortError, VideoError
from dvdm.video import (
    SUPPORTED_IMAGE_EXTENSIONS,
    SUPPORTED_VIDEO_EXTENSIONS,
    is_video_path,
    probe_video,
    read_video,
    write_frames,
    write_gif,
    write_mp4,
    write_png,
)


def smooth_clip(t: int = 12, h: int = 48, w: int = 64) -> np.ndarray:
    """Soft gradients drifting over time: easy for H.264, so the round-trip error is small."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = [np.stack([128 + 100 * np.sin((x + 2 * i) / 20), 128 + 80 * np.cos((y + i) / 15),
                        np.full_like(x, 40 + 10 * i)], axis=-1) for i in range(t)]
    return np.clip(frames, 0, 255).astype(np.uint8)


def few_colour_clip(t: int = 6, h: int = 20, w: int = 30) -> np.ndarray:
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 250], [10, 20, 30]], np.uint8)
    return colours[np.random.default_rng(1).integers(0, len(colours), (t, h, w))]


def write_with_pyav(path: Path, frames: np.ndarray, codec: str, fps: int = 8) -> None:
    """Containers other than MP4 (Matroska, AVI) written directly, to test the reader on them."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def overstate_avi_frame_count(src: Path, dst: Path, extra: int = 1) -> int:
    """Copy an AVI with `extra` frames added to the counts in its header, as some writers leave them.

    RIFF AVI (Microsoft's AVIMAINHEADER / AVISTREAMHEADER): the `avih` chunk's data holds
    dwMicroSecPerFrame, dwMaxBytesPerSec, dwPaddingGranularity, dwFlags, dwTotalFrames (bytes 16-19), and
    the video stream's `strh` holds fccType 'vids', fccHandler, dwFlags, wPriority, wLanguage,
    dwInitialFrames, dwScale, dwRate, dwStart, dwLength (bytes 32-35); each chunk's data starts 8 bytes
    after its tag (tag + 32-bit size). FFmpeg reports dwLength as the stream's frame count. The stream
    itself (the `movi` chunks and the `idx1` index) is untouched. Returns the new count.
    """
    data = bytearray(src.read_bytes())
    avih, strh = data.index(b"avih") + 8, data.index(b"strh") + 8
    assert data[strh:strh + 4] == b"vids"
    total, length = struct.unpack_from("<I", data, avih + 16)[0], struct.unpack_from("<I", data, strh + 32)[0]
    assert total == length > 0
    struct.pack_into("<I", data, avih + 16, total + extra)
    struct.pack_into("<I", data, strh + 32, length + extra)
    dst.write_bytes(bytes(data))
    return total + extra


def avi_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each chunk inside an AVI's `movi` list (frames are '00dc' chunks)."""
    movi = data.index(b"movi")  # LIST, its size (counted from 'movi' on), 'movi', then the chunks
    end, pos, chunks = movi + struct.unpack_from("<I", data, movi - 4)[0], movi + 4, []
    while pos + 8 <= end:
        size = struct.unpack_from("<I", data, pos + 4)[0]
        chunks.append((pos, size))
        pos += 8 + size + (size & 1)
    return chunks


def assert_video_error(path, match: str, **kwargs) -> VideoError:
    """The error is a VideoError on one line that names the file and says `match`."""
    with pytest.raises(VideoError) as err:
        read_video(path, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert os.path.basename(str(path).rstrip("/")) in message
    assert match in message, message
    return err.value


# ------------------------------------------------------------------------------------------- round trips


def test_mp4_round_trip(tmp_path):
    clip = smooth_clip()
    path = tmp_path / "clip.mp4"
    write_mp4(path, clip, fps=8.0)
    video = read_video(path)
    assert video.frames.shape == clip.shape and video.frames.dtype == np.uint8
    info = video.info
    assert (info.frames, info.height, info.width, info.fps) == (12, 48, 64, 8.0)
    assert (info.codec, info.pix_fmt, info.container, info.path) == ("h264", "yuv420p", "mp4", str(path))
    # yuv420p halves chroma resolution, so even a lossless encode is off by ~1-2 levels on colour edges.
    assert np.abs(video.frames.astype(int) - clip).mean() < 3
    assert probe_video(path) == info
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]  # the temporary file was renamed away


def test_mp4_is_faststart_and_fractional_fps(tmp_path):
    path = tmp_path / "clip.mp4"
    write_mp4(path, smooth_clip(t=5), fps=12.5, crf=30)
    data = path.read_bytes()
    assert 0 <= data.find(b"moov") < data.find(b"mdat")  # index first: playback starts while loading
    assert probe_video(path).fps == 12.5


def test_mp4_is_tagged_bt709_and_keeps_flat_colours(tmp_path):
    clip = np.zeros((3, 32, 64, 3), np.uint8)
    clip[:, :, :32], clip[:, :, 32:] = (200, 30, 60), (20, 180, 90)
    write_mp4(tmp_path / "flat.mp4", clip, crf=0)
    with av.open(str(tmp_path / "flat.mp4")) as container:
        frame = next(container.decode(video=0))
        assert (frame.colorspace, frame.color_primaries, frame.color_trc) == (1, 1, 1)  # 1 = BT.709
    frames = read_video(tmp_path / "flat.mp4").frames.astype(int)
    assert np.abs(frames[:, 4:-4, 4:28] - clip[:, 4:-4, 4:28]).max() <= 3  # away from the colour edge
    assert np.abs(frames[:, 4:-4, 36:-4] - clip[:, 4:-4, 36:-4]).max() <= 3


def test_mp4_odd_size_is_padded_by_edge_replication(tmp_path):
    clip = smooth_clip(t=4, h=31, w=45)
    path = tmp_path / "odd.mp4"
    write_mp4(path, clip)
    frames = read_video(path).frames
    assert frames.shape == (4, 32, 46, 3)
    assert np.abs(frames[:, :31, :45].astype(int) - clip).mean() < 3
    # The added row/column copies its neighbour (up to compression error).
    assert np.abs(frames[:, 31].astype(int) - frames[:, 30]).mean() < 3
    assert np.abs(frames[:, :, 45].astype(int) - frames[:, :, 44]).mean() < 3


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint8),
                                 np.zeros((2, 8, 8, 4), np.uint8), np.zeros((0, 8, 8, 3), np.uint8)])
def test_writers_reject_bad_frames(tmp_path, bad):
    for writer, name in [(write_mp4, "a.mp4"), (write_gif, "a.gif"), (write_frames, "a")]:
        with pytest.raises(ValueError, match=r"uint8 \(T, H, W, 3\)"):
            writer(tmp_path / name, bad)
    assert list(tmp_path.iterdir()) == []


def test_write_mp4_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="fps"):
        write_mp4(tmp_path / "a.mp4", smooth_clip(t=2), fps=0)
    with pytest.raises(ValueError, match="crf"):
        write_mp4(tmp_path / "a.mp4", smooth_clip(t=2), crf=60)


def test_gif_round_trip_keeps_every_frame(tmp_path):
    clip = few_colour_clip()
    clip[3] = clip[2]  # a still moment: Pillow's GIF writer would merge these two frames
    path = tmp_path / "clip.gif"
    write_gif(path, clip, fps=8.0)
    video = read_video(path)
    np.testing.assert_array_equal(video.frames, clip)  # <= 256 colours per frame: lossless
    assert (video.info.codec, video.info.container, video.info.frames) == ("gif", "gif", 6)
    assert video.info.fps == pytest.approx(8.0, abs=0.5)
    with Image.open(path) as im:
        assert im.n_frames == 6 and im.info.get("loop") == 0  # loops forever


def test_gif_many_colours_is_close(tmp_path):
    clip = smooth_clip(t=3)
    write_gif(tmp_path / "c.gif", clip)
    assert np.abs(read_video(tmp_path / "c.gif").frames.astype(int) - clip).mean() < 4


def test_write_png(tmp_path):
    image = few_colour_clip(t=1)[0]
    write_png(tmp_path / "one.png", image)
    with Image.open(tmp_path / "one.png") as im:
        assert im.format == "PNG"
        np.testing.assert_array_equal(np.asarray(im), image)
    with pytest.raises(ValueError):
        write_png(tmp_path / "bad.png", image.astype(np.float32))


def test_write_frames_round_trip_and_replace(tmp_path):
    clip = few_colour_clip(t=5)
    folder = tmp_path / "frames"
    write_frames(folder, clip)
    assert sorted(p.name for p in folder.iterdir()) == ["000.png", "001.png", "002.png", "003.png", "004.png"]
    video = read_video(folder, fps=10)
    np.testing.assert_array_equal(video.frames, clip)
    info = video.info
    assert (info.container, info.codec, info.fps, info.pix_fmt) == ("frames", "png", 10.0, "rgb24")
    write_frames(folder, clip[:2])  # a shorter clip replaces the folder as a whole: no stale frames
    assert sorted(p.name for p in folder.iterdir()) == ["000.png", "001.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


# ------------------------------------------------------------------------------------------ frame folders


def test_folder_natural_sort(tmp_path):
    for i in [10, 2, 1, 33, 3]:
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / f"frame_{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.png").write_bytes(b"ignored too")
    video = read_video(tmp_path)
    assert video.frames[:, 0, 0, 0].tolist() == [1, 2, 3, 10, 33]
    assert video.info.fps == 0.0 and video.info.frames == 5


@pytest.mark.parametrize("mode, colour", [("L", 77), ("RGBA", (10, 20, 30, 128)), ("P", 5), ("1", 1)])
def test_folder_promotes_to_rgb(tmp_path, mode, colour):
    for i in range(3):
        Image.new(mode, (6, 5), colour).save(tmp_path / f"{i}.png")
    frames = read_video(tmp_path).frames
    assert frames.shape == (3, 5, 6, 3) and frames.dtype == np.uint8
    if mode == "L":
        assert np.all(frames == 77)
    if mode == "RGBA":
        assert np.all(frames == np.array([10, 20, 30], np.uint8))


def test_folder_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    depth = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    for i in range(2):
        Image.fromarray(depth).save(tmp_path / f"{i}.png")
    frames = read_video(tmp_path).frames
    np.testing.assert_array_equal(frames[0, ..., 0], np.round(depth / 257).astype(np.uint8))
    assert np.all(frames[..., 0] == frames[..., 2])


def test_folder_jpeg_and_start_max_frames(tmp_path):
    for i in range(6):
        Image.new("RGB", (16, 8), (40 * i, 0, 0)).save(tmp_path / f"{i:02d}.JPG", quality=95)
    video = read_video(tmp_path, start=2, max_frames=3)
    assert video.frames.shape == (3, 8, 16, 3)
    assert np.abs(video.frames[:, 0, 0, 0].astype(int) - [80, 120, 160]).max() <= 3
    assert (video.info.codec, video.info.frames) == ("jpeg", 6)
    with pytest.raises(ClipTooShortError, match="cannot start at frame 6"):
        read_video(tmp_path, start=6)


def test_video_start_and_max_frames(tmp_path):
    clip = smooth_clip(t=10)
    path = tmp_path / "c.mp4"
    write_mp4(path, clip)
    part = read_video(path, start=3, max_frames=4)
    full = read_video(path)
    np.testing.assert_array_equal(part.frames, full.frames[3:7])
    assert part.info.frames == 10  # the source's count, not the slice's
    assert read_video(path, start=8, max_frames=5).frames.shape[0] == 2
    with pytest.raises(ClipTooShortError, match="cannot start at frame 10, the video has 10 frames"):
        read_video(path, start=10)


def test_matroska_counts_frames_by_packets(tmp_path):
    clip = smooth_clip(t=9)
    path = tmp_path / "c.mkv"
    write_with_pyav(path, clip, "libx264")
    info = probe_video(path)
    assert (info.frames, info.container, info.codec) == (9, "matroska", "h264")
    assert read_video(path, max_frames=2).info.frames == 9
    assert read_video(path).frames.shape == clip.shape


def test_is_video_path():
    assert is_video_path("a/b/clip.MP4") and is_video_path("x.webm") and is_video_path(Path("y.gif"))
    assert not is_video_path("frames/") and not is_video_path("x.png") and not is_video_path("x.txt")
    assert ".mp4" in SUPPORTED_VIDEO_EXTENSIONS and ".png" in SUPPORTED_IMAGE_EXTENSIONS


# ------------------------------------------------------------------------------------------- bad inputs


def test_missing_path(tmp_path):
    assert_video_error(tmp_path / "nope.mp4", "no such file")
    with pytest.raises(VideoError, match="nope.mp4: no such file"):
        probe_video(tmp_path / "nope.mp4")


def test_zero_byte_file(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"")
    err = assert_video_error(tmp_path / "clip.mp4", "file is empty (0 bytes)")
    assert str(err) == f"{tmp_path / 'clip.mp4'}: file is empty (0 bytes)"


def test_random_bytes(tmp_path):
    (tmp_path / "x.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    assert_video_error(tmp_path / "x.mp4", "not a readable video (truncated or corrupt")
    with pytest.raises(VideoError, match="x.mp4: not a readable video"):
        probe_video(tmp_path / "x.mp4")


@pytest.mark.parametrize("name", ["notes.txt", "clip", "still.png"])
def test_unsupported_extension(tmp_path, name):
    (tmp_path / name).write_bytes(b"something")
    assert_video_error(tmp_path / name, "unsupported file type")


def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_video_error(tmp_path / "empty", "folder has no images")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    assert_video_error(tmp_path / "docs", "folder has no images")


def test_mixed_sizes(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(10):
        Image.new("RGB", (64, 48 if i == 7 else 64)).save(folder / f"{i:03d}.png")
    err = assert_video_error(folder, "frame 007.png is 64x48 but frame 000.png is 64x64 (mixed sizes)")
    assert str(err).startswith(f"{folder}/: ")
    with pytest.raises(VideoError, match="mixed sizes"):
        read_video(folder, max_frames=2)  # caught from the headers even when not decoding frame 7
    with pytest.raises(VideoError, match="mixed sizes"):
        probe_video(folder)


@pytest.mark.parametrize("damage", ["junk", "truncated", "empty"])
def test_unreadable_image_in_folder(tmp_path, damage):
    for i in range(4):
        Image.fromarray(few_colour_clip(t=1, h=32, w=32)[0]).save(tmp_path / f"{i}.png")
    target = tmp_path / "2.png"
    data = target.read_bytes()
    target.write_bytes({"junk": b"not a png at all", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    assert_video_error(tmp_path, "frame 2.png is not a readable image")


def test_truncated_matroska_is_an_error_not_a_short_clip(tmp_path):
    path = tmp_path / "full.mkv"
    write_with_pyav(path, smooth_clip(t=40), "libx264")
    assert read_video(path).frames.shape[0] == 40
    # Matroska has no frame count: the decoded frames stop well before the duration in the header.
    assert_video_error(truncate(path, tmp_path / "half.mkv", 0.5), "truncated or corrupt")


def test_truncated_faststart_mp4(tmp_path):
    # With the index first, FFmpeg opens the cut file and fails mid-decode.
    path = tmp_path / "full.mp4"
    write_mp4(path, smooth_clip(t=40))
    assert_video_error(truncate(path, tmp_path / "cut.mp4", 0.9), "truncated or corrupt")
    assert_video_error(truncate(path, tmp_path / "half.mp4", 0.5), "truncated or corrupt")


def test_avi_header_one_frame_over_a_whole_stream_is_read(tmp_path):
    """Issue 13 (5): an AVI whose header counts one frame more than its stream holds (what a writer that
    counts a dropped frame leaves, and every player plays) is read, with the frames its stream holds.
    Before the fix: "decoded 20 of the 21 frames in its header"."""
    clip = smooth_clip(t=20)
    path = tmp_path / "whole.avi"
    write_with_pyav(path, clip, "mpeg4")
    over = tmp_path / "header_plus_one.avi"
    assert overstate_avi_frame_count(path, over) == 21
    assert probe_video(over).frames == 21  # the header's claim: probing decodes nothing
    video = read_video(over)
    np.testing.assert_array_equal(video.frames, read_video(path).frames)
    assert video.info.frames == 20  # what the stream holds
    # more than one frame over is not a miscount the reader excuses
    overstate_avi_frame_count(path, tmp_path / "plus_two.avi", extra=2)
    assert_video_error(tmp_path / "plus_two.avi", "decoded 20 of the 22 frames in its header")


def test_truncated_avi_missing_only_its_last_frame_is_still_refused(tmp_path):
    """Truncation that costs one frame is not mistaken for an off-by-one header: cut at a chunk boundary,
    the file has lost its idx1 index (written after the last frame), so the packets read outnumber the
    index; cut inside the last frame, the demuxer flags that packet as cut short."""
    path = tmp_path / "whole.avi"
    write_with_pyav(path, smooth_clip(t=20), "mpeg4")
    data = path.read_bytes()
    last, size = avi_chunks(data)[-1]
    at_boundary = tmp_path / "cut_at_chunk.avi"
    at_boundary.write_bytes(data[:last])
    assert_video_error(at_boundary, "decoded 19 of the 20 frames in its header; 19 packets read")
    inside = tmp_path / "cut_in_last_frame.avi"
    inside.write_bytes(data[:last + 8 + size // 2])
    assert_video_error(inside, "the stream ends in a packet cut short")
    assert read_video(inside, max_frames=5).frames.shape[0] == 5  # the intact beginning is still readable


# ------------------------------------------------------------------------------------------- real clips


@pytest.mark.real
def test_real_kinetics_mp4(real_data):
    video = read_video(real_data / "kinetics" / "demo.mp4")
    assert video.frames.shape == (280, 256, 340, 3)
    info = video.info
    assert (info.frames, info.fps, info.codec) == (280, 28.0, "h264")
    assert (info.pix_fmt, info.container) == ("yuv420p", "mp4")
    assert probe_video(real_data / "kinetics" / "demo.mp4") == info


@pytest.mark.real
def test_real_truncated_mp4_halves(real_data, tmp_path):
    # demo.mp4 keeps its index at the end, so half the bytes cannot even be opened.
    cut = truncate(real_data / "kinetics" / "demo.mp4", tmp_path / "demo_half.mp4", 0.5)
    assert_video_error(cut, "not a readable video (truncated or corrupt")


@pytest.mark.real
def test_real_ucf_avi_and_its_truncation(real_data, tmp_path):
    video = read_video(real_data / "ucf101_probable" / "test.avi")
    assert video.frames.shape == (164, 240, 320, 3)
    assert (video.info.codec, video.info.fps, video.info.container) == ("mpeg4", 25.0, "avi")
    # FFmpeg decodes the first 77 frames of the half file and stops without complaint; the reader
    # compares with the 164 frames in the AVI header and refuses.
    cut = truncate(real_data / "ucf101_probable" / "test.avi", tmp_path / "half.avi", 0.5)
    assert_video_error(cut, "decoded 77 of the 164 frames in its header")
    assert read_video(cut, max_frames=5).frames.shape[0] == 5  # the intact beginning is still readable


@pytest.mark.real
def test_real_ucf_avi_with_a_header_one_frame_over(real_data, tmp_path):
    src = real_data / "ucf101_probable" / "test.avi"
    over = tmp_path / "plus_one.avi"
    assert overstate_avi_frame_count(src, over) == 165
    video = read_video(over)
    assert video.frames.shape == (164, 240, 320, 3) and video.info.frames == 164
    np.testing.assert_array_equal(video.frames[-1], read_video(src).frames[-1])


@pytest.mark.real
def test_real_bair_frame_folder(real_data):
    video = read_video(real_data / "bair" / "bair_00026")
    assert video.frames.shape == (30, 64, 64, 3)
    assert (video.info.container, video.info.codec, video.info.frames) == ("frames", "png", 30)


@pytest.mark.real
def test_real_kth_grayscale_comes_out_rgb(real_data):
    video = read_video(real_data / "kth" / "kth_00004", fps=25)
    assert video.frames.shape == (40, 64, 64, 3) and video.frames.dtype == np.uint8
    assert video.info.pix_fmt == "gray" and video.info.fps == 25.0
    assert np.array_equal(video.frames[..., 0], video.frames[..., 1])
    assert np.array_equal(video.frames[..., 0], video.frames[..., 2])
    assert video.frames.std() > 10  # real content, not a blank


@pytest.mark.real
def test_real_1080p_avi_first_frames(real_data):
    video = read_video(real_data / "ntu_rgbd" / "S001C001P001R001A001_rgb.avi", max_frames=3)
    assert video.frames.shape == (3, 1080, 1920, 3)
    assert (video.info.frames, video.info.fps, video.info.codec) == (103, 30.0, "h264")


def test_ntsc_frame_rate_survives(tmp_path):
    # write_mp4 turns float rates into exact fractions (29.97002997... -> 30000/1001) for the time base.
    write_mp4(tmp_path / "ntsc.mp4", smooth_clip(t=3), fps=30000 / 1001)
    assert probe_video(tmp_path / "ntsc.mp4").fps == pytest.approx(30000 / 1001, rel=1e-9)
