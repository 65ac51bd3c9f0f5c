"""Which frames of a video make a training/eval clip.

Follows LFDM's data loaders: "uniform" spreads the clip over the whole video with
`np.linspace(..., dtype=int)`, its training-time "random" mode jitters that grid, and a video shorter than
the clip is padded by repeating its last frame. A too-short video is an error unless padding is asked for,
so a silently repeated tail never sneaks into a benchmark.
"""

from __future__ import annotations

import numpy as np

from dvdm.errors import ClipTooShortError

_MODES = ("uniform", "stride")


def _prefix(source: str | None) -> str:
    return f"{source}: " if source else ""


def sample_indices(n_total: int, n_frames: int, *, mode: str = "uniform", stride: int = 1, start: int = 0,
                   pad_short: bool = False, source: str | None = None) -> np.ndarray:
    """Indices (int64, length `n_frames`, non-decreasing, all < `n_total`) of the frames to take.

    mode "uniform": `n_frames` indices spread evenly from `start` to the last frame (`stride` unused).
    mode "stride": `start, start+stride, start+2*stride, ...`.
    When the video is too short: with `pad_short` the frames that exist are taken and the last one is
    repeated (for "stride", the last one on the stride grid); otherwise ClipTooShortError. `source`
    (a file name) prefixes the error message.
    """
    if mode not in _MODES:
        raise ValueError(f"sampling mode must be one of {_MODES}, got {mode!r}")
    if n_frames < 1 or stride < 1 or start < 0 or n_total < 0:
        raise ValueError(f"need n_frames >= 1, stride >= 1, start >= 0, n_total >= 0; got n_frames={n_frames}, "
                         f"stride={stride}, start={start}, n_total={n_total}")
    step = stride if mode == "stride" else 1
    span = step * (n_frames - 1) + 1  # frames from `start` the clip covers at its densest
    if start + span <= n_total:
        if mode == "uniform":
            return np.linspace(start, n_total - 1, n_frames).astype(np.int64)
        return start + stride * np.arange(n_frames, dtype=np.int64)
    how = f"stride {stride}" if mode == "stride" else "uniform"
    if not pad_short or start >= n_total:
        raise ClipTooShortError(f"{_prefix(source)}needs {n_frames} frames ({how} from frame {start} -> "
                                f"{start + span} frames) but the video has {n_total}")
    available = np.arange(start, n_total, step, dtype=np.int64)
    return np.pad(available, (0, n_frames - len(available)), mode="edge")


def sample_clip(frames: np.ndarray, n_frames: int, **kwargs: object) -> np.ndarray:
    """`frames[sample_indices(len(frames), n_frames, **kwargs)]`: the clip itself, time on axis 0."""
    return frames[sample_indices(len(frames), n_frames, **kwargs)]  # type: ignore[arg-type]


def jittered_uniform_indices(n_total: int, n_frames: int, rng: np.random.Generator | int | None, *,
                             pad_short: bool = False, source: str | None = None) -> np.ndarray:
    """LFDM's training-time "random" sampling: the uniform grid with each inner index moved at random.

    The first and last frames stay fixed; inner index i lands anywhere strictly between its grid
    neighbours i-1 and i+1, and the result is sorted (neighbours may cross; repeats are possible).
    A video shorter than the clip pads or raises as in `sample_indices`.
    """
    if n_total < n_frames:
        return sample_indices(n_total, n_frames, pad_short=pad_short, source=source)
    grid = sample_indices(n_total, n_frames)
    if n_frames <= 2:
        return grid
    gaps = np.diff(grid)
    # Offsets in [1 - gap_before, gap_after - 1], as LFDM's np.random.randint(1 - step[i-1], step[i]).
    offsets = np.random.default_rng(rng).integers(1 - gaps[:-1], gaps[1:])
    out = grid.copy()
    out[1:-1] += offsets
    return np.sort(out)
