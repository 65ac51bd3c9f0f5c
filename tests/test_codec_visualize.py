"""Figures and videos of a decomposition (`dvdm.codec.visualize`): files exist, decode, and are atomic."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from dvdm.codec import visualize
from dvdm.codec.compensate import grid_shape
from dvdm.codec.residuals import closed_loop_residuals


def make_clip(t: int = 6, h: int = 40, w: int = 56, block: int = 16, seed: int = 0):
    """A panning noise clip with known vectors (content moves right by 2: mv = (-2, 0)) and one hole."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, (h, w + 2 * t, 3), dtype=np.uint8)
    frames = np.stack([big[:, 2 * t - 2 * i:2 * t - 2 * i + w] for i in range(t)])
    gh, gw = grid_shape(h, w, block)
    mv = np.zeros((t - 1, gh, gw, 2), np.int16)
    mv[..., 0] = -2
    mv[:, 0, 0] = 0                                  # a still block (drawn as a dot)
    valid = np.ones((t - 1, gh, gw), bool)
    valid[:, -1, -1] = False                         # an "intra" block (outlined)
    residual, _ = closed_loop_residuals(frames, mv, block)
    return frames, mv, valid, residual


def png_size(path):
    with Image.open(path) as im:
        im.load()
        return im.size, im.mode


def leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_motion_field_png(tmp_path):
    frames, mv, valid, _ = make_clip()
    out = tmp_path / "sub" / "field.png"
    visualize.motion_field_png(out, frames[0], frames[1], mv[0], valid[0], block=16, title="pan right")
    (w, h), mode = png_size(out)
    assert mode == "RGB" and w >= 300 and h >= 150
    visualize.motion_field_png(tmp_path / "nofield.png", frames[0], frames[1], np.zeros_like(mv[0]), block=16)
    assert png_size(tmp_path / "nofield.png")[0][0] >= 300
    assert leftovers(tmp_path / "sub", {"field.png"}) == []


def test_residual_png(tmp_path):
    _, _, _, residual = make_clip()
    out = tmp_path / "res.png"
    visualize.residual_png(out, residual[0])
    (w, h), _ = png_size(out)
    assert w >= 200 and h >= 100
    visualize.residual_png(tmp_path / "zero.png", np.zeros((8, 8, 3), np.int16))   # all-zero residual
    assert (tmp_path / "zero.png").stat().st_size > 0


@pytest.mark.parametrize("indices", [None, [1, 5]])
def test_inspect_png(tmp_path, indices):
    frames, mv, valid, residual = make_clip(t=9)
    out = tmp_path / "inspect.png"
    visualize.inspect_png(out, frames, mv, residual, block=16, frame_indices=indices, valid=valid)
    (w, h), _ = png_size(out)
    rows = 4 if indices is None else 2
    assert w >= 500 and h >= rows * 120


def test_default_indices_evenly_spaced():
    assert visualize._default_indices(16) == [1, 6, 10, 15]
    assert visualize._default_indices(2) == [1]
    assert visualize._default_indices(3) == [1, 2]


def test_inspect_mp4(tmp_path):
    frames, mv, _, residual = make_clip(t=7, h=40, w=56)
    out = tmp_path / "inspect.mp4"
    visualize.inspect_mp4(out, frames, mv, residual, block=16, fps=8)
    with av.open(str(out)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 7
    assert decoded[0].shape == (40, 3 * 56, 3)
    assert leftovers(tmp_path, {"inspect.mp4"}) == []


def test_motion_colours():
    # content moving right (mv = (-2, 0)) is red; still is black; the value scales with |mv|
    mv = np.array([[[-2, 0], [0, 0], [2, 0]]], np.int16)
    rgb = visualize.motion_to_rgb(mv, 2, 2, 6, max_motion=2)
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    assert tuple(rgb[0, 2]) == (0, 0, 0)
    assert tuple(rgb[0, 4]) == (0, 255, 255)           # moving left: cyan
    half = visualize.motion_to_rgb(mv, 2, 2, 6, max_motion=4)
    assert 120 <= half[0, 0, 0] <= 135


def test_bad_shapes_raise_and_write_nothing(tmp_path):
    frames, mv, valid, residual = make_clip()
    with pytest.raises(ValueError, match="mv"):
        visualize.inspect_mp4(tmp_path / "x.mp4", frames, mv[:, :1], residual, block=16)
    with pytest.raises(ValueError, match="residual"):
        visualize.inspect_png(tmp_path / "x.png", frames, mv, residual[:-1], block=16)
    with pytest.raises(ValueError, match="frame_indices"):
        visualize.inspect_png(tmp_path / "x.png", frames, mv, residual, block=16, frame_indices=[0])
    with pytest.raises(ValueError, match="valid"):
        visualize.motion_field_png(tmp_path / "x.png", frames[0], frames[1], mv[0], valid[0, :1], block=16)
    assert list(tmp_path.iterdir()) == []


def test_no_partial_files_when_writing_fails(tmp_path, monkeypatch):
    frames, mv, _, residual = make_clip()

    def broken_save(self, fp, *args, **kwargs):      # writes half a file, then dies
        with open(fp, "wb") as f:
            f.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        visualize.residual_png(tmp_path / "res.png", residual[0])
    monkeypatch.undo()

    real_open = av.open

    def broken_open(file, mode="r", **kwargs):
        if mode == "w":
            with open(file, "wb") as f:
                f.write(b"partial mp4")
            raise RuntimeError("encoder crashed")
        return real_open(file, mode, **kwargs)

    monkeypatch.setattr(av, "open", broken_open)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        visualize.inspect_mp4(tmp_path / "clip.mp4", frames, mv, residual, block=16)
    assert list(tmp_path.iterdir()) == []
