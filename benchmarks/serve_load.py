"""Benchmark: the real HTTP service under load, with a promotion in the middle (targets: 0 errors, stable memory).

A throwaway MLflow registry (SQLite, temp folder) gets the export folder (default models/export) as version 1
(`champion`) and again as version 2. `dvdm serve --model models:/dvdm@champion` runs as a separate process on
loopback, polling the alias every second. Then, bounded in requests and time, for concurrency 1, 4 and 8:
latency p50/p95/p99, throughput, errors (non-200 other than 429), 429s (the service's back-pressure), and the
server's RSS before and after. During the concurrency-4 phase the `champion` alias moves to version 2; the
report counts requests answered by each version and any failure around the swap. Requests leave `steps` out
unless `--steps` is given, so the service samples with the export's own sampler and step count (what a user
gets). A last, long phase (`--long`, 500 requests at concurrency 4) samples the server's RSS every
`--rss-every` requests: memory must stay flat, not grow with the number of requests served.

    python benchmarks/serve_load.py [--export models/export] [--requests 24] [--steps N] [--long 500] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dvdm.tracking import registry  # noqa: E402
from dvdm.tracking.runs import start_run, end_run  # noqa: E402
from dvdm.tracking.store import open_client  # noqa: E402
from serving.mlflow_model import register_export  # noqa: E402
from bench_json import write_results  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def stop(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the server has not exited within 30 s."""
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()


def register(client, export: Path, key: str) -> str:
    run = start_run(client, "dvdm-serve-load", key)
    mv = register_export(client, run, export, name="dvdm", alias=None)
    end_run(client, run)
    return str(mv.version)


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def manifest_sampler(export: Path) -> str:
    sampler = json.loads((export / "manifest.json").read_text()).get("sampler") or {}
    return f"{sampler.get('name', 'ddim')} {sampler.get('steps', '?')} steps, guidance {sampler.get('guidance', '?')}"


def run_long(one, pid: int, total: int, concurrency: int, every: int) -> dict:
    """`total` requests at `concurrency`, the server's RSS sampled every `every` completed requests."""
    curve = [(0, rss_mb(pid))]
    results: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()

    def tracked(i: int) -> tuple[int, float, str | None]:
        out = one(i)
        with lock:
            results.append(out)
            if len(results) % every == 0:
                curve.append((len(results), rss_mb(pid)))
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(tracked, range(total)))
    wall = time.perf_counter() - started
    ok = np.array([lat for code, lat, _ in results if code == 200] or [np.nan])
    half = [mb for n, mb in curve if n >= total // 2]
    print(f"long phase: {len(results)} requests done", file=sys.stderr)
    return {"requests": len(results), "ok": int(np.isfinite(ok).sum()),
            "errors": sum(code not in (200, 429) for code, _, _ in results),
            "rejected_429": sum(code == 429 for code, _, _ in results),
            "p50": float(np.nanpercentile(ok, 50)), "p95": float(np.nanpercentile(ok, 95)),
            "throughput_rps": float(np.isfinite(ok).sum()) / wall, "rss_mb": curve,
            "second_half_growth_mb": (half[-1] - half[0]) if len(half) > 1 else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", type=Path, default=ROOT / "models" / "export")
    ap.add_argument("--requests", type=int, default=24, help="requests per concurrency level")
    ap.add_argument("--steps", type=int, help="sampling steps per request (default: the export's own)")
    ap.add_argument("--long", type=int, default=500, help="requests in the long memory phase (0: skip it)")
    ap.add_argument("--long-concurrency", type=int, default=4)
    ap.add_argument("--rss-every", type=int, default=25, help="requests between RSS samples in the long phase")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="time bound per concurrency level")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.export / "manifest.json").is_file():
        print(f"error: {args.export} is not an export folder (run `dvdm pipeline` first)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="dvdm-serve-load-"))
    uri = f"sqlite:///{tmp}/mlflow/mlflow.db"
    client = open_client(uri=uri)
    v1, v2 = register(client, args.export, "v1"), register(client, args.export, "v2")
    registry.set_alias(client, registry.CHAMPION, v1, "dvdm")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DVDM_SERVE_POLL_INTERVAL": "1",
           "DVDM_SERVE_MAX_QUEUE": "16"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "dvdm"), "serve", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    rows, versions_seen = [], {}
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if requests.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
            time.sleep(0.5)
        image = png_bytes()
        prompts = [f"a red square moves {d}" for d in ("left", "right", "up", "down")]

        def one(i: int) -> tuple[int, float, str | None]:
            # prompts and seeds vary so that nothing downstream can be answered from a cache
            data = {"prompt": prompts[i % len(prompts)], "seed": str(i), "format": "mp4"}
            if args.steps is not None:
                data["steps"] = str(args.steps)
            t0 = time.perf_counter()
            try:
                r = requests.post(f"{base}/v1/generate", files={"image": ("x.png", image, "image/png")}, data=data,
                                  timeout=300)
                return r.status_code, time.perf_counter() - t0, r.headers.get("X-Model-Version")
            except requests.RequestException:
                return -1, time.perf_counter() - t0, None

        rss_start = rss_mb(server.pid)
        for concurrency in (1, 4, 8):
            before = rss_mb(server.pid)
            results: list[tuple[int, float, str | None]] = []
            swap = None
            if concurrency == 4:  # promote version 2 while requests are in flight
                swap = threading.Timer(2.0, registry.set_alias, (client, registry.CHAMPION, v2, "dvdm"))
                swap.start()
            started = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                futures = []
                for i in range(args.requests):
                    if time.perf_counter() - started > args.max_seconds:
                        break
                    futures.append(pool.submit(one, i))
                    if len(futures) >= concurrency:
                        futures[-concurrency].result()
                results = [f.result() for f in futures]
            wall = time.perf_counter() - started
            if swap is not None:
                swap.join()
            ok = [lat for code, lat, _ in results if code == 200]
            for code, _, version in results:
                if code == 200:
                    versions_seen.setdefault(concurrency, {}).setdefault(version, 0)
                    versions_seen[concurrency][version] += 1
            lat = np.array(ok) if ok else np.array([np.nan])
            rows.append({"concurrency": concurrency, "requests": len(results), "ok": len(ok),
                         "errors": sum(code not in (200, 429) for code, _, _ in results),
                         "rejected_429": sum(code == 429 for code, _, _ in results),
                         "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
                         "p99": float(np.percentile(lat, 99)), "throughput_rps": len(ok) / wall,
                         "rss_before_mb": before, "rss_after_mb": rss_mb(server.pid),
                         "versions": versions_seen.get(concurrency, {})})
            print(f"concurrency {concurrency}: {len(ok)}/{len(results)} ok", file=sys.stderr)
        long_phase = run_long(one, server.pid, args.long, args.long_concurrency, args.rss_every) if args.long else None
        rss_end = rss_mb(server.pid)
    finally:
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'conc':>4s} {'reqs':>4s} {'ok':>4s} {'err':>3s} {'429':>3s} {'p50 s':>6s} {'p95 s':>6s} {'p99 s':>6s} "
          f"{'req/s':>6s} {'RSS MB before->after':>21s}  versions")
    for r in rows:
        print(f"{r['concurrency']:4d} {r['requests']:4d} {r['ok']:4d} {r['errors']:3d} {r['rejected_429']:3d} "
              f"{r['p50']:6.2f} {r['p95']:6.2f} {r['p99']:6.2f} {r['throughput_rps']:6.2f} "
              f"{r['rss_before_mb']:9.0f} -> {r['rss_after_mb']:7.0f}  {r['versions']}")
    steps = args.steps or f"the export's {manifest_sampler(args.export)}"
    print(f"(server RSS {rss_start:.0f} MB at start, {rss_end:.0f} MB at the end; version {v2} promoted during "
          f"concurrency 4; steps per request: {steps})")
    if long_phase:
        curve = long_phase["rss_mb"]
        print(f"long phase: {long_phase['ok']}/{long_phase['requests']} ok, {long_phase['errors']} errors, "
              f"{long_phase['throughput_rps']:.2f} req/s at concurrency {args.long_concurrency}, p50 "
              f"{long_phase['p50']:.2f} s, p95 {long_phase['p95']:.2f} s")
        print("  RSS MB after n requests: " + ", ".join(f"{n}: {mb:.0f}" for n, mb in curve))
        print(f"  growth over the second half: {long_phase['second_half_growth_mb']:+.1f} MB")
    if args.json:
        write_results(args.json, "serve_load", {"rows": rows, "rss_start_mb": rss_start,
                               "rss_end_mb": rss_end, "steps": args.steps or manifest_sampler(args.export),
                               "long_phase": long_phase})
    return 0


if __name__ == "__main__":
    sys.exit(main())
