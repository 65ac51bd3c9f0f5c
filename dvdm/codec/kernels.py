"""Compiled (numba) kernels of the encoder: luma, block-matching search, residuals.

Encoder side only: the decoder (`compensate.py`, `residuals.py`) stays pure numpy so serving can share
it without numba. `tests/test_codec_*` check that these kernels agree bit for bit with the numpy decoder.
Compiled functions are cached on disk (numba `cache=True`), so the compile cost is paid once per machine.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def luma_kernel(frames):
    """BT.601 luma, (77 R + 150 G + 29 B + 128) >> 8, of uint8 (N, H, W, 3) frames as int32 (N, H, W)."""
    n, h, w, _ = frames.shape
    out = np.empty((n, h, w), np.int32)
    for k in range(n):
        for y in range(h):
            for x in range(w):
                out[k, y, x] = (np.int32(frames[k, y, x, 0]) * 77 + np.int32(frames[k, y, x, 1]) * 150
                                + np.int32(frames[k, y, x, 2]) * 29 + 128) >> 8
    return out


@numba.njit(cache=True, nogil=True)
def yuv_kernel(frames):
    """BT.601 Y, Cb, Cr in integer arithmetic (Cb, Cr centred on 128) of uint8 (N, H, W, 3) frames as int32
    (N, H, W, 3): the planes of a chroma-aware motion search."""
    n, h, w, _ = frames.shape
    out = np.empty((n, h, w, 3), np.int32)
    for k in range(n):
        for y in range(h):
            for x in range(w):
                r = np.int32(frames[k, y, x, 0])
                g = np.int32(frames[k, y, x, 1])
                b = np.int32(frames[k, y, x, 2])
                out[k, y, x, 0] = (r * 77 + g * 150 + b * 29 + 128) >> 8
                out[k, y, x, 1] = ((-43 * r - 85 * g + 128 * b + 128) >> 8) + 128
                out[k, y, x, 2] = ((128 * r - 107 * g - 21 * b + 128) >> 8) + 128
    return out


@numba.njit(cache=True, nogil=True)
def residual_kernel(cur, ref, mv, block):
    """cur - motion_compensate(ref, mv, block) as int16, for (N, H, W, C) uint8 frames.

    Same clamped-coordinate rule as `compensate.motion_compensate` (checked bit for bit by the tests).
    """
    n, h, w, c = cur.shape
    gh = (h + block - 1) // block
    gw = (w + block - 1) // block
    out = np.empty((n, h, w, c), np.int16)
    for k in range(n):
        for by in range(gh):
            ya = by * block
            yb = min(ya + block, h)
            for bx in range(gw):
                xa = bx * block
                xb = min(xa + block, w)
                dx = np.int64(mv[k, by, bx, 0])
                dy = np.int64(mv[k, by, bx, 1])
                inside = ya + dy >= 0 and yb - 1 + dy < h and xa + dx >= 0 and xb - 1 + dx < w
                for y in range(ya, yb):
                    sy = y + dy if inside else min(max(y + dy, 0), h - 1)
                    for x in range(xa, xb):
                        sx = x + dx if inside else min(max(x + dx, 0), w - 1)
                        for ch in range(c):
                            out[k, y, x, ch] = np.int16(cur[k, y, x, ch]) - np.int16(ref[k, sy, sx, ch])
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def sad(yc, yr, n, y0, x0, dx, dy, b, r, bound):
    """SAD over every plane of the block at (y0, x0) against the reference displaced by (dx, dy); stops
    once > bound. yc, yr: (N, H, W, C) int32 planes (C = 1 for luma, 3 for Y, Cb, Cr)."""
    total = 0
    ry = y0 + dy + r
    rx = x0 + dx + r
    c = yc.shape[3]
    for j in range(b):
        row_c = yc[n, y0 + j, x0:x0 + b]
        row_r = yr[n, ry + j, rx:rx + b]
        acc = 0
        for i in range(b):
            for ch in range(c):
                acc += abs(row_c[i, ch] - row_r[i, ch])
        total += acc
        if total > bound:
            return total
    return total


@numba.njit(cache=True, nogil=True)
def search_kernel(yc, yr, b, r, threshold, full, prev, mv):
    n_frames = yc.shape[0]
    gh = yc.shape[1] // b
    gw = yc.shape[2] // b
    big = 1 << 60
    cand = np.zeros((8, 2), np.int64)
    for n in range(n_frames):
        for by in range(gh):
            for bx in range(gw):
                y0 = by * b
                x0 = bx * b
                best_sad = sad(yc, yr, n, y0, x0, 0, 0, b, r, big)
                bdx = 0
                bdy = 0
                if best_sad <= threshold:
                    continue
                if full:
                    for dy in range(-r, r + 1):
                        for dx in range(-r, r + 1):
                            s = sad(yc, yr, n, y0, x0, dx, dy, b, r, best_sad)
                            ln = abs(dx) + abs(dy)
                            if s < best_sad or (s == best_sad and ln < abs(bdx) + abs(bdy)):
                                best_sad, bdx, bdy = s, dx, dy
                else:
                    # predictors: spatial neighbours already decided in this frame, temporal from the last
                    nc = 0
                    if bx > 0:
                        cand[nc, 0] = mv[n, by, bx - 1, 0]
                        cand[nc, 1] = mv[n, by, bx - 1, 1]
                        nc += 1
                    if by > 0:
                        cand[nc, 0] = mv[n, by - 1, bx, 0]
                        cand[nc, 1] = mv[n, by - 1, bx, 1]
                        nc += 1
                        if bx + 1 < gw:
                            cand[nc, 0] = mv[n, by - 1, bx + 1, 0]
                            cand[nc, 1] = mv[n, by - 1, bx + 1, 1]
                            nc += 1
                    if n > 0:
                        cand[nc, 0] = mv[n - 1, by, bx, 0]
                        cand[nc, 1] = mv[n - 1, by, bx, 1]
                    else:
                        cand[nc, 0] = prev[by, bx, 0]
                        cand[nc, 1] = prev[by, bx, 1]
                    nc += 1
                    if nc >= 3:  # component-wise median of the first three predictors
                        ax, bx_, cx = cand[0, 0], cand[1, 0], cand[2, 0]
                        ay, by_, cy = cand[0, 1], cand[1, 1], cand[2, 1]
                        cand[nc, 0] = max(min(ax, bx_), min(max(ax, bx_), cx))
                        cand[nc, 1] = max(min(ay, by_), min(max(ay, by_), cy))
                        nc += 1
                    for k in range(nc):
                        dx = min(max(cand[k, 0], -r), r)
                        dy = min(max(cand[k, 1], -r), r)
                        if dx == bdx and dy == bdy:
                            continue
                        s = sad(yc, yr, n, y0, x0, dx, dy, b, r, best_sad)
                        if s < best_sad or (s == best_sad and abs(dx) + abs(dy) < abs(bdx) + abs(bdy)):
                            best_sad, bdx, bdy = s, dx, dy
                    # logarithmic N-step search around the best predictor
                    step = max(1, (r + 1) // 2)
                    while best_sad > 0:
                        cx0 = bdx
                        cy0 = bdy
                        for sy in range(-1, 2):
                            for sx in range(-1, 2):
                                if sx == 0 and sy == 0:
                                    continue
                                dx = cx0 + sx * step
                                dy = cy0 + sy * step
                                if dx < -r or dx > r or dy < -r or dy > r:
                                    continue
                                s = sad(yc, yr, n, y0, x0, dx, dy, b, r, best_sad)
                                if s < best_sad or (s == best_sad and abs(dx) + abs(dy) < abs(bdx) + abs(bdy)):
                                    best_sad, bdx, bdy = s, dx, dy
                        if step == 1:
                            break
                        step //= 2
                    # small diamond until no neighbour improves
                    moved = True
                    while moved and best_sad > 0:
                        moved = False
                        cx0 = bdx
                        cy0 = bdy
                        for k in range(4):
                            dx = cx0 + (1 if k == 0 else (-1 if k == 1 else 0))
                            dy = cy0 + (1 if k == 2 else (-1 if k == 3 else 0))
                            if dx < -r or dx > r or dy < -r or dy > r:
                                continue
                            s = sad(yc, yr, n, y0, x0, dx, dy, b, r, best_sad)
                            if s < best_sad:
                                best_sad, bdx, bdy = s, dx, dy
                                moved = True
                mv[n, by, bx, 0] = bdx
                mv[n, by, bx, 1] = bdy
