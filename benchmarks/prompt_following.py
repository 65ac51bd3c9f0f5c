"""Sampling settings vs prompt following, for one trained model: the measurement behind the defaults.

For each combination of guidance scale, sampling steps and (ED-VDM) motion-vector dead zone, runs the
prompt-swap test (`dvdm.evaluate.prompt_swap`: every first frame x 8 directions x 3 speeds) on held-out first
frames and on first frames drawn with PIL, and prints direction / speed accuracy, the fraction of non-zero
motion vectors (ED-VDM; the data has ~7-10 %) and seconds per clip. Same seeds in every row.

    python benchmarks/prompt_following.py --model models/diffusion --data data/ingested \\
        --guidance 1 2 3 --dead-zone 0.5 0.75 --steps 25 --json benchmarks/results/prompt_following.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dvdm.data.shards import ShardedDataset  # noqa: E402
from dvdm.evaluate.prompt_swap import first_frame_sets, run_prompt_swap  # noqa: E402
from dvdm.pipeline import VideoPipeline  # noqa: E402
from dvdm.stages.evaluate import held_out  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="train-diffusion run directory or its checkpoint/")
    ap.add_argument("--data", required=True, help="ingested synthetic dataset (held-out first frames)")
    ap.add_argument("--clips", type=int, default=16, help="held-out first frames")
    ap.add_argument("--drawn", type=int, default=8, help="PIL-drawn first frames")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0])
    ap.add_argument("--steps", type=int, nargs="+", default=[25])
    ap.add_argument("--dead-zone", type=float, nargs="+", default=[0.5])
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    model = Path(args.model)
    ckpt = model / "checkpoint" if (model / "checkpoint" / "config.json").is_file() else model
    pipe = VideoPipeline.from_checkpoint(ckpt)
    _, records, clips = held_out(ShardedDataset(Path(args.data)), "test", args.clips)
    sets = first_frame_sets(records, clips, args.clips, args.drawn, pipe.height, pipe.width, pipe.frames,
                            seed=args.seed)
    rows = []
    for guidance, steps, dead_zone in itertools.product(args.guidance, args.steps, args.dead_zone):
        if hasattr(pipe.space, "dead_zone"):
            pipe.space.dead_zone = dead_zone
        elif dead_zone != 0.5:
            continue
        targets: list[np.ndarray] = []
        decode = pipe.space.decode

        def spy(target, first, _decode=decode):  # count non-zero vectors of what was sampled
            targets.append(np.asarray(target))
            return _decode(target, first)

        pipe.space.decode = spy
        row = {"guidance": guidance, "steps": steps, "dead_zone": dead_zone}
        for name, frames in sets.items():
            if not frames:
                continue
            targets.clear()
            started = time.perf_counter()
            res = run_prompt_swap(lambda im, pr, se: pipe(im, pr, steps=steps, guidance=guidance, seeds=se),
                                  frames, seed=args.seed, batch_size=args.batch_size)
            seconds = (time.perf_counter() - started) / len(res["per_sample"])
            row[name] = {k: res[k] for k in ("n", "direction_accuracy", "speed_accuracy", "speed_error",
                                             "static_fraction", "n_out_of_frame", "all_prompts")} \
                | {"seconds_per_clip": seconds}
            if hasattr(pipe.space, "dead_zone") and targets:
                from dvdm.codec.quantize import quantize_motion

                mv = np.stack([quantize_motion(t[:2], pipe.space.search, dead_zone) for t in targets])
                row[name]["nonzero_vectors"] = float((np.abs(mv).max(axis=1) > 0).mean())
        pipe.space.decode = decode
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.json:  # after every row, so a long sweep that is stopped keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"model": str(model), "data": args.data, "rows": rows}, indent=2))

    head = f"{'guidance':>8} {'steps':>5} {'dead zone':>9} | {'set':>8} {'n':>4} {'direction':>9} {'speed':>6} " \
           f"{'speed err':>9} {'static':>6} {'mv != 0':>7} {'s/clip':>6} | {'exits':>5} {'all dir':>7} {'all speed':>9}"
    print(head)
    print("-" * len(head))
    for row in rows:
        for name in sets:
            if name not in row:
                continue
            r = row[name]
            nz = f"{r['nonzero_vectors']:.1%}" if "nonzero_vectors" in r else "-"
            print(f"{row['guidance']:>8.1f} {row['steps']:>5d} {row['dead_zone']:>9.2f} | {name:>8} {r['n']:>4d} "
                  f"{r['direction_accuracy']:>9.1%} {r['speed_accuracy']:>6.1%} {r['speed_error']:>9.2f} "
                  f"{r['static_fraction']:>6.1%} {nz:>7} {r['seconds_per_clip']:>6.3f} | "
                  f"{r['n_out_of_frame']:>5d} {r['all_prompts']['direction_accuracy']:>7.1%} "
                  f"{r['all_prompts']['speed_accuracy']:>9.1%}")


if __name__ == "__main__":
    main()
