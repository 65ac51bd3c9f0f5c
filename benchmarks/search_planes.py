"""Luma vs luma + chroma motion search on the synthetic data: do the vectors carry the object's motion?

For clips of the default preset's distribution (8x64x64, one object, half on textured backgrounds), every
block the object covers (block centre 2 px inside it) in frames 1..T-1 should carry the object's true
vector. A luma-only search cannot see an object whose luma equals its background's, and its motion then
goes to the residual. Prints, per search planes, the share of such blocks with the true vector, by object
colour and background, and the time of a decomposition; writes JSON.

    python benchmarks/search_planes.py [--clips 400] [--json benchmarks/results/search_planes.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvdm.codec.decompose import DecomposeConfig, decompose  # noqa: E402
from dvdm.codec.search import MATCH_PLANES  # noqa: E402
from dvdm.data.base import ClipSpec  # noqa: E402
from dvdm.data.synthetic import SyntheticSource  # noqa: E402


def object_blocks(labels: dict, frames: int, block: int, grid: tuple[int, int]):
    """(t, by, bx) of the blocks whose centre lies 2 px inside the object's box, in frames 1..T-1."""
    o = labels["objects"][0]
    (vx, vy), size = o["velocity"], o["size"]
    for t in range(1, frames):
        x, y = o["start"][0] + vx * t, o["start"][1] + vy * t
        for by in range(grid[0]):
            for bx in range(grid[1]):
                cx, cy = bx * block + block // 2, by * block + block // 2
                if x + 2 <= cx <= x + size - 2 and y + 2 <= cy <= y + size - 2:
                    yield t, by, bx


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    spec = ClipSpec(frames=8, height=64, width=64)
    src = SyntheticSource(spec, num_train=args.clips, num_val=0, num_test=0, seed=0, textured_background_prob=0.5)
    clips = [src.make_clip("train", i) for i in range(args.clips)]
    rows = {}
    for match in MATCH_PLANES:
        config = DecomposeConfig(block=8, search=8, strategy="fast", match=match)
        decompose(clips[0].frames, config)  # compile the kernels outside the timing
        hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        seconds = 0.0
        for clip in clips:
            started = time.perf_counter()
            d = decompose(clip.frames, config)
            seconds += time.perf_counter() - started
            o = clip.labels["objects"][0]
            want = (-o["velocity"][0], -o["velocity"][1])  # backward vectors point to where the block came from
            for key in (f"{o['color']}/{clip.labels['background']}", f"all/{clip.labels['background']}", "all"):
                for t, by, bx in object_blocks(clip.labels, spec.frames, 8, d.grid):
                    hits[key][0] += 1
                    hits[key][1] += int(tuple(int(v) for v in d.mv[t - 1, by, bx]) == want)
        rows[match] = {"true_vector_share": {k: h[1] / h[0] for k, h in sorted(hits.items())},
                       "blocks": {k: h[0] for k, h in sorted(hits.items())},
                       "ms_per_clip": 1000 * seconds / len(clips)}
    keys = list(rows[MATCH_PLANES[0]]["true_vector_share"])
    print(f"{'object / background':22} " + " ".join(f"{m:>7}" for m in MATCH_PLANES) + "   blocks")
    for k in keys:
        print(f"{k:22} " + " ".join(f"{rows[m]['true_vector_share'][k]:>7.1%}" for m in MATCH_PLANES)
              + f"   {rows[MATCH_PLANES[0]]['blocks'][k]:>6d}")
    print(f"{'ms per clip':22} " + " ".join(f"{rows[m]['ms_per_clip']:>7.2f}" for m in MATCH_PLANES))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": "benchmarks/search_planes.py --clips " + str(args.clips),
                                         "clips": args.clips, "size": [8, 64, 64], "rows": rows}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
