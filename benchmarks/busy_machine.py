"""Benchmark: the tiny training stages and `dvdm serve` alone vs beside a process that keeps one core busy.

Target: slowdown (busy / alone) <= 2.5x. Two arms, alternating, identical but for `DVDM_CPU_TUNING`:
- `untuned` (`DVDM_CPU_TUNING=off`): the libraries' defaults, OpenMP and ONNX Runtime pools that spin-wait
  between parallel regions and size themselves from the machine's cores;
- `tuned` (the default): `dvdm.runtime.cpus`: threads from affinity and the cgroup quota, ONNX Runtime
  sessions that do not spin, and training's thread governor (`dvdm.train.thread_governor`: the thread count
  whose measured steps are faster, re-checked every 200 steps); OpenMP keeps its waiting policy.
`--arms` adds, for comparison, `one-thread` (OMP_NUM_THREADS=1: fixed, so no governor) and `passive`
(OMP_WAIT_POLICY=PASSIVE, which results/busy_machine_passive.json measured as its tuned arm), and
`--no-serve` skips the service.

A fresh tiny-preset project is ingested and decomposed once; then each arm runs the dvc.yaml commands of
`train-ae` and `train-diffusion` (the real CLI, a fresh process each) alone and beside `python -c "while True: pass"`,
and serves the tiny export with `dvdm serve` to `--requests` requests at concurrency 4 (default steps), alone
and beside the busy process. Wall-clock per stage process; requests/s for the service.

    python benchmarks/busy_machine.py [--json PATH] [--requests 24] [--timeout 900] [--arms ...] [--no-serve]
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_json import write_results  # noqa: E402
from orchestration import make_project  # noqa: E402
from serve_load import free_port, png_bytes, stop  # noqa: E402

ARMS = {"untuned": {"DVDM_CPU_TUNING": "off"}, "tuned": {},
        # for comparison (`--arms`): a fixed single intra-op thread, and fully passive OpenMP waiting
        "one-thread": {"OMP_NUM_THREADS": "1"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
DEFAULT_ARMS = ("untuned", "tuned")
STAGES = ("train-ae", "train-diffusion")
TARGET = 2.5


@contextmanager
def busy_core(enabled: bool):
    """A process spinning on one core for the duration (nothing when not `enabled`)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if enabled else None
    try:
        time.sleep(0.5 if proc else 0)
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def stage_command(repo: Path, stage: str) -> list[str]:
    cmd = shlex.split(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    return [str(Path(sys.executable).parent / cmd[0]), *cmd[1:]]


def run_stage(repo: Path, stage: str, env: dict, timeout: float) -> float:
    """Seconds the stage's process took; `timeout` if it had not finished by then (it is killed)."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run(stage_command(repo, stage), cwd=repo, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return timeout
    if r.returncode:
        raise SystemExit(f"{stage} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return time.perf_counter() - t0


def serve_throughput(repo: Path, env: dict, n: int, concurrency: int, busy: bool) -> dict:
    """requests/s and median latency of `dvdm serve` on the project's export at the manifest's default steps."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "dvdm"), "serve", "--model",
                               str(repo / "models" / "export"), "--port", str(port)], cwd=repo, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while not _ready(base):
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
            if time.time() > deadline:
                raise SystemExit("server not ready after 120 s")
            time.sleep(0.3)
        image = png_bytes()

        def one(_i: int) -> float:
            t0 = time.perf_counter()
            r = requests.post(f"{base}/v1/generate", files={"image": ("x.png", image, "image/png")},
                              data={"prompt": "a red square moves left", "seed": "0", "format": "mp4"}, timeout=600)
            if r.status_code != 200:
                raise SystemExit(f"request failed: {r.status_code} {r.text[:300]}")
            return time.perf_counter() - t0

        one(0)  # the first request pays for lazy initialisation in both arms
        with busy_core(busy):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(concurrency) as pool:
                latencies = sorted(pool.map(one, range(n)))
            wall = time.perf_counter() - t0
    finally:
        stop(server)
    return {"requests_per_second": n / wall, "p50_seconds": latencies[len(latencies) // 2], "seconds": wall}


def _ready(base: str) -> bool:
    try:
        return requests.get(f"{base}/readyz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--requests", type=int, default=24, help="requests per serve measurement")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds before a stage run is stopped")
    ap.add_argument("--arms", nargs="+", choices=sorted(ARMS), default=list(DEFAULT_ARMS))
    ap.add_argument("--no-serve", action="store_true", help="measure the training stages only")
    args = ap.parse_args()
    arms = {name: ARMS[name] for name in args.arms}
    tmp = Path(tempfile.mkdtemp(prefix="dvdm-bench-busy-"))
    base_env = {k: v for k, v in os.environ.items()
                if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "DVDM_CPU_TUNING")}
    base_env.update({"DVC_NO_ANALYTICS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"})
    rows = []
    try:
        repo = make_project(tmp)
        for stage in ("ingest", "decompose"):
            run_stage(repo, stage, base_env, args.timeout)
        for stage in STAGES:
            for arm, extra in arms.items():
                env = {**base_env, **extra}
                alone = run_stage(repo, stage, env, args.timeout)
                with busy_core(True):
                    busy = run_stage(repo, stage, env, args.timeout)
                rows.append({"what": stage, "arm": arm, "alone": alone, "busy": busy, "unit": "s",
                             "slowdown": busy / alone, "timed_out": busy >= args.timeout})
                print(f"{stage} {arm}: alone {alone:.1f} s, busy {busy:.1f} s", file=sys.stderr)
        if not args.no_serve:
            run_stage(repo, "export", base_env, args.timeout)
        for arm, extra in ({} if args.no_serve else arms).items():
            env = {**base_env, **extra}
            alone = serve_throughput(repo, env, args.requests, args.concurrency, busy=False)
            busy = serve_throughput(repo, env, args.requests, args.concurrency, busy=True)
            rows.append({"what": f"serve c={args.concurrency}", "arm": arm, "alone": alone["requests_per_second"],
                         "busy": busy["requests_per_second"], "unit": "req/s",
                         "slowdown": alone["requests_per_second"] / busy["requests_per_second"],
                         "alone_p50_seconds": alone["p50_seconds"], "busy_p50_seconds": busy["p50_seconds"],
                         "timed_out": False})
            print(f"serve {arm}: alone {alone['requests_per_second']:.2f} req/s, busy "
                  f"{busy['requests_per_second']:.2f} req/s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'what':14s} {'arm':8s} {'alone':>9s} {'busy':>9s} {'unit':>6s} {'slowdown':>9s}")
    for r in rows:
        mark = ">=" if r["timed_out"] else ""
        print(f"{r['what']:14s} {r['arm']:8s} {r['alone']:9.2f} {mark + format(r['busy'], '.2f'):>9s} "
              f"{r['unit']:>6s} {r['slowdown']:8.2f}x")
    worst = max((r["slowdown"] for r in rows if r["arm"] == "tuned"), default=float("nan"))
    print(f"(slowdown = busy / alone time, or alone / busy throughput; busy = beside one process spinning on one "
          f"of {os.cpu_count()} cores; tuned = dvdm's default, untuned = DVDM_CPU_TUNING=off; target <= {TARGET}x: "
          f"worst tuned {worst:.2f}x)")
    if args.json:
        write_results(args.json, "busy_machine", {"rows": rows, "target_slowdown": TARGET,
                                                  "worst_tuned_slowdown": worst, "requests": args.requests,
                                                  "concurrency": args.concurrency,
                                                  "arms": {a: ARMS[a] for a in args.arms}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
