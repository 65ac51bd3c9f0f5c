"""Motion vectors from libx264 (`dvdm.codec.ffmpeg_mv`): sign convention, grid mapping, holes, exactness."""

from __future__ import annotations

import numpy as np
import pytest

from dvdm.codec import ffmpeg_mv
from dvdm.codec.compensate import grid_shape, motion_compensate
from dvdm.codec.ffmpeg_mv import FFmpegMotionError, ffmpeg_motion_vectors, fill_holes
from dvdm.codec.residuals import closed_loop_residuals, reconstruct


def panning_noise(t: int, h: int, w: int, dx: int, dy: int, seed: int = 0) -> np.ndarray:
    """Random-noise texture whose content moves by (dx, dy) px per frame: f_t[y, x] = f_{t-1}[y-dy, x-dx]."""
    rng = np.random.default_rng(seed)
    m = 4 + (t - 1) * max(abs(dx), abs(dy))
    big = rng.integers(0, 256, (h + 2 * m, w + 2 * m, 3), dtype=np.uint8)
    return np.stack([big[m - i * dy:m - i * dy + h, m - i * dx:m - i * dx + w] for i in range(t)])


def random_ish(t: int, h: int, w: int, seed: int) -> np.ndarray:
    """A panning texture with a patch of fresh noise per frame (forces intra blocks) and mild noise."""
    rng = np.random.default_rng(seed)
    clip = panning_noise(t, h, w, 2, -1, seed).astype(np.int16)
    clip += rng.integers(-3, 4, clip.shape, dtype=np.int16)
    ph, pw = max(1, h // 3), max(1, w // 3)
    clip[1:, :ph, :pw] = rng.integers(0, 256, (t - 1, ph, pw, 3))
    return np.clip(clip, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("block", [8, 16])
def test_sign_convention_matches_compensate(block):
    frames = panning_noise(4, 64, 64, dx=3, dy=2)
    assert np.array_equal(frames[1][2:, 3:], frames[0][:-2, :-3])   # content moved right/down
    mv, valid = ffmpeg_motion_vectors(frames, block)
    assert mv.dtype == np.int16 and mv.shape == (3, *grid_shape(64, 64, block), 2)
    inner = slice(16 // block, None)                                   # skip the first macroblock row/col
    assert valid[:, inner, inner].all()
    assert (mv[:, inner, inner, 0] == -3).all() and (mv[:, inner, inner, 1] == -2).all()
    for t in range(1, 4):
        pred = motion_compensate(frames[t - 1], mv[t - 1], block)
        assert np.array_equal(pred[16:, 16:], frames[t][16:, 16:])     # zero residual away from the border


@pytest.mark.parametrize("t", [2, 7])
def test_picture_types_and_info(t):
    frames = panning_noise(t, 32, 48, 1, 1)
    mv, valid, info = ffmpeg_motion_vectors(frames, 16, return_info=True)
    assert info["picture_types"] == "I" + "P" * (t - 1)
    assert mv.shape == (t - 1, 2, 3, 2) and valid.shape == (t - 1, 2, 3) and valid.dtype == bool
    assert info["intra_holes"] == int((~valid).sum()) == sum(info["intra_holes_per_frame"])
    assert info["bytes"] > 0 and info["coded_size"] == [32, 48]
    assert info["encoder"]["preset"] == "ultrafast" and "keyint=%d" % t in info["encoder"]["x264-params"]
    assert info["partitions"] == {"16x16": info["vectors"]}          # ultrafast: 16x16 only, full-pel
    assert info["subpel_vectors"] == 0


@pytest.mark.parametrize("shape,block,hole_fill", [
    ((3, 37, 45), 8, "zero"),
    ((3, 45, 37), 16, "neighbors"),
    ((4, 37, 45), 32, "neighbors"),
    ((2, 16, 16), 16, "zero"),
    ((3, 5, 3), 4, "zero"),
    ((3, 33, 50), 12, "neighbors"),
])
def test_exact_round_trip_odd_sizes(shape, block, hole_fill):
    frames = random_ish(*shape, seed=sum(shape) + block)
    mv, valid, info = ffmpeg_motion_vectors(frames, block, hole_fill=hole_fill, return_info=True)
    t, h, w = shape
    assert mv.shape == (t - 1, *grid_shape(h, w, block), 2) and valid.shape == mv.shape[:3]
    assert info["coded_size"] == [-(-h // 16) * 16, -(-w // 16) * 16]
    residual, recon = closed_loop_residuals(frames, mv, block)
    assert residual.dtype == np.int16 and np.array_equal(recon, frames)
    assert np.array_equal(reconstruct(frames[0], mv, residual, block), frames)


def test_large_frames():
    frames = random_ish(3, 256, 340, seed=3)
    mv, valid, info = ffmpeg_motion_vectors(frames, 16, return_info=True)
    assert mv.shape == (2, 16, 22, 2) and info["coded_size"] == [256, 352]
    residual, _ = closed_loop_residuals(frames, mv, 16)
    assert np.array_equal(reconstruct(frames[0], mv, residual, 16), frames)


def test_holes_zero_and_neighbors():
    frames = random_ish(5, 64, 64, seed=11)
    mv0, valid0, info = ffmpeg_motion_vectors(frames, 16, hole_fill="zero", return_info=True)
    mvn, validn = ffmpeg_motion_vectors(frames, 16, hole_fill="neighbors")
    assert np.array_equal(valid0, validn)
    assert (~valid0).any() and valid0.any(), "the fresh-noise patch should give intra blocks"
    assert info["intra_holes"] == int((~valid0).sum())
    assert (mv0[~valid0] == 0).all()
    assert np.array_equal(mv0[valid0], mvn[valid0])                  # valid vectors are untouched
    n, gh, gw = valid0.shape
    for t, y, x in zip(*np.nonzero(~valid0)):
        nb = [mv0[t, yy, xx] for yy in range(y - 1, y + 2) for xx in range(x - 1, x + 2)
              if (yy, xx) != (y, x) and 0 <= yy < gh and 0 <= xx < gw and valid0[t, yy, xx]]
        expect = np.sign(np.median(nb, axis=0)) * np.floor(np.abs(np.median(nb, axis=0)) + 0.5) if nb else (0, 0)
        assert tuple(mvn[t, y, x]) == tuple(np.asarray(expect, int))


def test_fill_holes_unit():
    mv = np.zeros((1, 3, 3, 2), np.int16)
    mv[0, 0, 0] = (4, -4)
    mv[0, 0, 1] = (1, -1)
    mv[0, 1, 0] = (2, -2)
    mv[0, 2, 2] = (7, 7)
    valid = np.zeros((1, 3, 3), bool)
    valid[0, 0, 0] = valid[0, 0, 1] = valid[0, 1, 0] = True
    out = fill_holes(mv, valid, "neighbors")
    assert tuple(out[0, 1, 1]) == (2, -2)                 # median of 4, 1, 2
    assert tuple(out[0, 2, 2]) == (0, 0)                  # no valid neighbour: zero (its own value ignored)
    assert tuple(out[0, 0, 2]) == (1, -1)                 # one neighbour (0,1)
    assert tuple(out[0, 2, 0]) == (2, -2)
    assert tuple(out[0, 1, 2]) == (1, -1)                 # neighbour (0,1) only
    assert tuple(fill_holes(mv, valid, "zero")[0, 2, 2]) == (0, 0)
    with pytest.raises(ValueError):
        fill_holes(mv, valid, "mean")


def test_round_half_away_from_zero():
    num = np.array([-7, -6, -5, -2, -1, 0, 1, 2, 5, 6, 7, 10])
    got = ffmpeg_mv._round_half_away(num, 4)
    assert got.tolist() == [-2, -2, -1, -1, 0, 0, 0, 1, 1, 2, 2, 3]


def test_partitions_resolved_by_sad():
    """Two bands moving differently, with the boundary inside a macroblock row: veryfast uses 16x8
    partitions, and a 16-block over both takes whichever band vector predicts it better."""
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)
    frames = np.stack([np.concatenate([big[40:80, 40 - 3 * t:104 - 3 * t],
                                       big[80 + 2 * t:104 + 2 * t, 40 + 2 * t:104 + 2 * t]], 0)
                       for t in range(4)])
    mv, valid, info = ffmpeg_motion_vectors(frames, 16, preset="veryfast", return_info=True)
    assert any(k != "16x16" for k in info["partitions"])
    assert info["sad_resolved_blocks"] > 0
    top, bottom = (-3, 0), (2, 2)
    for t in range(1, 4):
        for bx in range(4):
            chosen = tuple(mv[t - 1, 2, bx])
            sads = {}
            for cand in (top, bottom):
                field = mv[t - 1].copy()
                field[2, bx] = cand
                pred = motion_compensate(frames[t - 1], field, 16)[32:48, bx * 16:bx * 16 + 16]
                sads[cand] = np.abs(pred.astype(int) - frames[t][32:48, bx * 16:bx * 16 + 16]).sum()
            assert chosen in sads and sads[chosen] == min(sads.values())
    residual, _ = closed_loop_residuals(frames, mv, 16)
    assert np.array_equal(reconstruct(frames[0], mv, residual, 16), frames)


def test_bad_inputs():
    good = panning_noise(3, 16, 16, 1, 0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        ffmpeg_motion_vectors(good[:1], 16)
    with pytest.raises(ValueError, match="uint8"):
        ffmpeg_motion_vectors(good.astype(np.float32), 16)
    with pytest.raises(ValueError, match="block"):
        ffmpeg_motion_vectors(good, 0)
    with pytest.raises(ValueError, match="hole_fill"):
        ffmpeg_motion_vectors(good, 16, hole_fill="mean")
    with pytest.raises(ValueError, match="preset"):
        ffmpeg_motion_vectors(good, 16, preset="turbo")
    with pytest.raises(ValueError, match="crf"):
        ffmpeg_motion_vectors(good, 16, crf=60)


def test_frame_count_mismatch_is_reported(monkeypatch):
    real = ffmpeg_mv._encode_decode

    def drop_last(*args, **kwargs):
        decoded, nbytes = real(*args, **kwargs)
        return decoded[:-1], nbytes

    monkeypatch.setattr(ffmpeg_mv, "_encode_decode", drop_last)
    with pytest.raises(FFmpegMotionError, match="returned 2 frames for a 3-frame clip"):
        ffmpeg_motion_vectors(panning_noise(3, 16, 16, 1, 0), 16)


@pytest.mark.real
def test_real_clip_round_trip_and_gain(real_data):
    av = pytest.importorskip("av")
    path = real_data / "kinetics" / "demo.mp4"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 16:
                break
    clip = np.ascontiguousarray(np.stack(frames)[:, ::2, ::2][:, :128, 21:149])   # 256x340 -> 128x128
    assert clip.shape == (16, 128, 128, 3)
    mv, valid, info = ffmpeg_motion_vectors(clip, 16, return_info=True)
    assert info["picture_types"] == "I" + "P" * 15
    assert valid.mean() > 0.8
    residual, _ = closed_loop_residuals(clip, mv, 16)
    assert np.array_equal(reconstruct(clip[0], mv, residual, 16), clip)
    zero_mv = np.abs(clip[1:].astype(np.int16) - clip[:-1]).mean()
    assert np.abs(residual).mean() < 0.8 * zero_mv
