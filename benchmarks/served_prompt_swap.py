"""The served champion, asked as a user would: first frames drawn with PIL, every direction x speed prompt.

Starts `dvdm serve` (ONNX Runtime, no torch; the registered `champion` of the project's MLflow store) on a
free loopback port, or uses a running server (`--url`). Draws `--frames` first frames with PIL
(`dvdm.evaluate.prompt_swap.drawn_first_frames`: anti-aliased shapes, sizes and positions the generator does
not use, on plain and textured backgrounds), POSTs each as a PNG to `/v1/generate` with the 24 prompts
"a <colour> <shape> moves <speed> <direction>" at the service's default steps and guidance, decodes the MP4
it answers, tracks the object and scores direction and speed. Writes a grid GIF of what came back.

    python benchmarks/served_prompt_swap.py [--frames 8] [--json benchmarks/results/served_prompt_swap.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import free_port  # noqa: E402

from dvdm.evaluate.prompt_swap import drawn_first_frames, run_prompt_swap, swap_grid  # noqa: E402
from dvdm.video import read_video, write_gif  # noqa: E402


def wait_ready(base: str, server: subprocess.Popen | None, seconds: float = 180) -> dict:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                return requests.get(f"{base}/v1/model", timeout=5).json()
        except requests.RequestException:
            pass
        if server is not None and server.poll() is not None:
            raise SystemExit(f"error: dvdm serve exited: {server.stderr.read()[-2000:]}")
        time.sleep(0.5)
    raise SystemExit(f"error: {base} was not ready within {seconds:.0f} s")


def main() -> int:
    from PIL import Image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running dvdm serve (default: start one on the project's champion)")
    ap.add_argument("--project", type=Path, default=ROOT)
    ap.add_argument("--frames", type=int, default=8, help="PIL-drawn first frames (x 24 prompts)")
    ap.add_argument("--seed", type=int, default=7, help="drawing seed (the evaluate stage uses 0)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--grid", type=Path, default=None, help="GIF of what came back (a row per prompt)")
    args = ap.parse_args()

    server = None
    if args.url:
        base = args.url.rstrip("/")
    else:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([str(Path(sys.executable).parent / "dvdm"), "serve", "--port", str(port),
                                   "--project", str(args.project)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        model = wait_ready(base, server)
        frames_per_clip = int(model["manifest"]["frames"])
        first = drawn_first_frames(args.frames, args.size, args.size, frames_per_clip, seed=args.seed)
        seconds: list[float] = []

        def generate(images, prompts, seeds):
            videos = []
            for image, prompt, seed in zip(images, prompts, seeds):
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format="PNG")
                started = time.perf_counter()
                r = requests.post(f"{base}/v1/generate", files={"image": ("frame.png", buf.getvalue(), "image/png")},
                                  data={"prompt": prompt, "seed": str(seed), "format": "mp4"}, timeout=300)
                seconds.append(time.perf_counter() - started)
                if r.status_code != 200:
                    raise SystemExit(f"error: /v1/generate answered {r.status_code}: {r.text[:500]}")
                with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
                    f.write(r.content)
                    f.flush()
                    videos.append(read_video(f.name).frames)
            return np.stack(videos)

        res = run_prompt_swap(generate, first, seed=args.seed, batch_size=24)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    if args.grid:
        args.grid.parent.mkdir(parents=True, exist_ok=True)
        write_gif(args.grid, swap_grid(res, first, columns=4), fps=8)
    summary = {k: res[k] for k in ("n", "n_first_frames", "direction_accuracy", "speed_accuracy", "speed_error",
                                   "static_fraction", "n_out_of_frame", "all_prompts", "confusion")}
    source = model.get("source")
    if isinstance(source, str):  # the machine's own paths mean nothing elsewhere: keep them project-relative
        model = {**model, "source": source.replace(f"file://{args.project.resolve()}/", "")}
    summary.update({"server": base if args.url else "dvdm serve (champion)", "model": model,
                    "backgrounds": sorted({f.origin for f in first}), "seconds_per_request": float(np.mean(seconds))})
    print(f"served champion, {res['n_first_frames']} PIL-drawn first frames x {res['prompts_per_frame']} prompts: "
          f"direction {res['direction_accuracy']:.1%} (chance 12.5 %), speed {res['speed_accuracy']:.1%} "
          f"(chance 33.3 %), mean speed error {res['speed_error']:.2f} px/frame, static "
          f"{res['static_fraction']:.1%}, {np.mean(seconds):.2f} s per request")
    by_bg: dict[str, list[bool]] = {}
    for s in (s for s in res["per_sample"] if s["inside"]):
        by_bg.setdefault(first[s["frame"]].origin, []).append(s["measured_direction"] == s["direction_index"])
    for bg, hits in sorted(by_bg.items()):
        print(f"  {bg:16s} direction {np.mean(hits):.1%} (n={len(hits)})")
    summary["direction_accuracy_by_background"] = {bg: float(np.mean(h)) for bg, h in by_bg.items()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
