"""Benchmark: peak memory of the training stages as the training set grows.

The stages stream the training set into memory-mapped files a clip at a time (`dvdm.train.shared_data`), so a
stage's private memory (RssAnon) should not grow with the number of clips; the pages of the mapped files
(RssFile) are the page cache's, shared by the processes of a machine and reclaimed under pressure. For each size in `--clips`, a synthetic
set (64x64, 16 frames: the tiny preset) is ingested and decomposed, then `dvdm train-ae` and `dvdm train`
run 2 steps on it (the real CLI, a fresh process each) and the peak private and file-backed memory of each
process is sampled. `--code DIR` runs the stages from another checkout (e.g. the commit before streaming) over the
same data, side by side in the same run.

A stage decompresses one shard (up to 256 clips, `ingest.clips_per_shard`) at a time, so sizes below 256
clips also measure the shard's own growth: compare sizes of at least 256. With `--steps N` the runs also time
N training steps per stage (fixed 2 threads, no governor), so the arms' steps/s can be compared in one run.

Reports the peaks per stage and size, and their growth in MB per 1,000 extra training clips (target: the
private growth is under a tenth of what the set itself takes per 1,000 clips, i.e. nothing private scales
with the data).

    python benchmarks/training_memory.py [--clips 256 1024] [--steps 2] [--code OLD_CHECKOUT] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_json import write_results  # noqa: E402

PRESET = ROOT / "dvdm" / "presets" / "tiny.yaml"
STAGES = ("train-ae", "train-diffusion")
RESULTS = {"train-ae": "autoencoder/results.json", "train-diffusion": "diffusion/results.json"}


def _status_kb(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / RssShmem of a live process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def peak_memory_mb(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Run `cmd`; peaks in MB of its private memory (RssAnon: what the process itself holds) and of its
    file-backed pages (RssFile: mapped files, the memory-mapped training set included, which the kernel
    shares between processes and reclaims under pressure), sampled every 20 ms; ru_maxrss is their sum."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "RssFile": 0}
    while proc.poll() is None:
        try:
            now = _status_kb(proc.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        for key in peak:
            peak[key] = max(peak[key], now.get(key, 0))
        time.sleep(0.02)
    if proc.wait():
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
    return {"private": round(peak["RssAnon"] / 1024, 1), "file_backed": round(peak["RssFile"] / 1024, 1)}


def make_data(where: Path, clips: int, env: dict[str, str]) -> Path:
    """Ingested + decomposed synthetic clips (`clips` training clips) in `where`."""
    where.mkdir(parents=True)
    py = [sys.executable, "-m", "dvdm"]
    sets = ["--set", f"options.num_train={clips}", "--set", "options.num_val=4", "--set", "options.num_test=4"]
    for cmd in ([*py, "ingest", "--params", str(PRESET), "--out", "ingested", *sets],
                [*py, "decompose", "--params", str(PRESET), "--in", "ingested", "--out", "decomposed",
                 "--metrics", "decompose.json"]):
        subprocess.run(cmd, cwd=where, env=env, check=True, capture_output=True)
    return where


def stage_commands(data: Path, out: Path, steps: int) -> dict[str, list[str]]:
    few = ["--set", f"steps={steps}", "--set", "log_every=1", "--set", "checkpoint_every=0"]
    py = [sys.executable, "-m", "dvdm"]
    return {"train-ae": [*py, "train-ae", "--params", str(PRESET), "--in", str(data / "decomposed"),
                         "--out", str(out / "autoencoder"), *few],
            "train-diffusion": [*py, "train", "--params", str(PRESET), "--in", str(data / "ingested"),
                                "--autoencoder", str(out / "autoencoder"), "--out", str(out / "diffusion"), *few,
                                "--set", "sample_every=0", "--set", "check_clips=0", "--set", "text=false"]}


def encoded_mb(clips: int) -> dict[str, float]:
    """What holding the training set in memory would take, per stage (the tiny preset's sizes)."""
    params = yaml.safe_load(PRESET.read_text())["ingest"]
    t, h, w = params["frames"], params["height"], params["width"]
    return {"train-ae": clips * (t - 1) * 3 * h * w * 2 / 2**20,          # int16 residual frames
            "train-diffusion": clips * t * h * w * 3 / 2**20}              # the uint8 clips read for encoding


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, nargs=2, default=[256, 1024], metavar=("SMALL", "LARGE"))
    ap.add_argument("--steps", type=int, default=2,
                    help="training steps per stage; with more, the speed table compares the arms' steps/s")
    ap.add_argument("--code", type=Path, help="also run the stages from this checkout (e.g. before streaming)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "training_memory.json")
    args = ap.parse_args()
    arms = {"streamed (this tree)": ROOT, **({f"baseline ({args.code.name})": args.code} if args.code else {})}
    base_env = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "2"}  # fixed: no thread governor
    peaks: dict[str, dict[str, dict[int, dict[str, float]]]] = {arm: {s: {} for s in STAGES} for arm in arms}
    with tempfile.TemporaryDirectory(prefix="dvdm-mem-") as tmp:
        for clips in args.clips:
            data = make_data(Path(tmp) / f"data{clips}", clips, {**base_env, "PYTHONPATH": str(ROOT)})
            for arm, code in arms.items():
                env = {**base_env, "PYTHONPATH": str(code)}
                out = Path(tmp) / f"{arm.split()[0]}{clips}"
                for stage, cmd in stage_commands(data, out, args.steps).items():
                    peak = peaks[arm][stage][clips] = peak_memory_mb(cmd, data, env)
                    results = json.loads((out / RESULTS[stage]).read_text())
                    peak["steps_per_second"] = round(results["steps"] / results["train_seconds"], 2)
                    print(f"{arm:24s} {stage:16s} {clips:5d} clips: private {peak['private']:.0f} MB, "
                          f"file-backed {peak['file_backed']:.0f} MB, {peak['steps_per_second']} steps/s",
                          flush=True)
    small, large = args.clips
    per_k = 1000 / (large - small)
    rows = []
    print(f"\n| arm | stage | private, {small} clips (MB) | private, {large} clips (MB) | private growth per 1,000 "
          f"clips (MB) | file-backed growth per 1,000 clips (MB) | the set in memory, per 1,000 clips (MB) |")
    print("|---|---|---|---|---|---|---|")
    for arm in arms:
        for stage in STAGES:
            a, b = peaks[arm][stage][small], peaks[arm][stage][large]
            growth = (b["private"] - a["private"]) * per_k
            file_growth = (b["file_backed"] - a["file_backed"]) * per_k
            held = encoded_mb(1000)[stage]
            rows.append({"arm": arm, "stage": stage, "peak_mb": {str(small): a, str(large): b},
                         "private_growth_mb_per_1000_clips": round(growth, 1),
                         "file_backed_growth_mb_per_1000_clips": round(file_growth, 1),
                         "in_memory_set_mb_per_1000_clips": round(held, 1), "flat": growth < 0.1 * held})
            print(f"| {arm} | {stage} | {a['private']:.0f} | {b['private']:.0f} | {growth:.0f} | {file_growth:.0f} "
                  f"| {held:.0f} |")
    print(f"\n| arm | stage | steps/s, {small} clips | steps/s, {large} clips |  ({args.steps} steps, 2 threads)")
    print("|---|---|---|---|")
    for arm in arms:
        for stage in STAGES:
            print(f"| {arm} | {stage} | {peaks[arm][stage][small]['steps_per_second']} "
                  f"| {peaks[arm][stage][large]['steps_per_second']} |")
    write_results(args.json, "training_memory", {"clips": args.clips, "steps": args.steps, "rows": rows,
                                                 "target": "private growth < 0.1 x the in-memory set per 1,000 clips"})
    return 0 if all(r["flat"] for r in rows if r["arm"].startswith("streamed")) else 1


if __name__ == "__main__":
    sys.exit(main())
