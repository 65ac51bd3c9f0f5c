"""Benchmark: what Prefect + MLflow + DVC cost on top of the work itself (target: under 10 %).

The same tiny pipeline (the `tiny` preset: every stage of dvc.yaml, from ingest to export) runs in a fresh
project copy two ways, each in its own fresh process, alternating:
- `direct`: the stage commands called one after another in-process (what the flow's tasks run), no
  orchestration, no tracking, no DVC;
- `flow`: `dvdm pipeline --force` (Prefect flow on a temporary local server, a DVC status check and
  `dvc commit` per stage, an MLflow parent run + a child run per stage with metrics and artifacts, model
  registration and the promotion gate).
Wall-clock of the whole process, so interpreter start-up and imports count on both sides.

    python benchmarks/orchestration.py [--json PATH] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIRECT = """
import sys, time
from pathlib import Path
from flows.dvc_stages import read_stages
from flows.environment import working_directory
from flows.stage_task import invoke_cli
root = Path(sys.argv[1])
with working_directory(root):
    for stage in read_stages(root).values():
        invoke_cli(stage.argv())
"""


def make_project(where: Path) -> Path:
    repo = where / "project"
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    for folder in ("dvdm", "serving"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b", "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=repo, env=env, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, env=env, check=True)
    return repo


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeats", type=int, default=2,
                    help="alternating direct/flow pairs; the first flow run also creates the Prefect and MLflow "
                         "databases (a one-time cost), later ones are the steady state")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dvdm-bench-orch-"))
    try:
        repo = make_project(tmp)
        env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "DVDM_WORK_DIR": str(repo / "work")}
        env.pop("MLFLOW_TRACKING_URI", None)
        dvdm = str(Path(sys.executable).parent / "dvdm")
        direct, flow = [], []
        for i in range(args.repeats):
            direct.append(timed([sys.executable, "-c", DIRECT, str(repo)], repo, env))
            print(f"direct run {i + 1}: {direct[-1]:.1f}s", file=sys.stderr)
            flow.append(timed([dvdm, "pipeline", "--project", str(repo), "--force"], repo, env))
            print(f"flow run {i + 1}: {flow[-1]:.1f}s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    d = statistics.median(direct)
    first = flow[0]
    steady = statistics.median(flow[1:]) if len(flow) > 1 else flow[0]
    overhead = steady - d
    print(f"{'mode':24s} {'runs':>4s} {'seconds':>8s} {'overhead':>9s}")
    print(f"{'direct (median)':24s} {len(direct):4d} {d:8.1f} {'':>9s}")
    print(f"{'flow, first run':24s} {1:4d} {first:8.1f} {100 * (first - d) / d:8.1f}%")
    if len(flow) > 1:
        print(f"{'flow, steady (median)':24s} {len(flow) - 1:4d} {steady:8.1f} {100 * overhead / d:8.1f}%")
    print(f"orchestration + tracking + DVC overhead, steady state: {overhead:.1f}s = {100 * overhead / d:.1f}% of "
          f"the direct run (target < 10%); the first run also creates the Prefect and MLflow databases")
    if args.json:
        sys.path.insert(0, str(ROOT))
        from dvdm.utils.atomic import write_json

        write_json(args.json, {"benchmark": "orchestration", "direct_seconds": direct, "flow_seconds": flow,
                               "overhead_seconds": overhead, "overhead_percent": 100 * overhead / d,
                               "first_run_overhead_percent": 100 * (first - d) / d,
                               "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "load_average": os.getloadavg()[0]}})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
