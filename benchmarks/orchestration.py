"""Benchmark: what Prefect + MLflow + DVC cost on top of the work itself (target: under 10 %).

The same tiny pipeline (the `tiny` preset: every stage of dvc.yaml, from ingest to export) runs in a fresh
project copy two ways, each in its own fresh process, alternating:
- `direct`: the stage functions called one after another in-process (what the flow's tasks run), no
  orchestration, no tracking, no DVC;
- `flow`: `dvdm pipeline --force` (Prefect flow on a local server started by the call, a
  `dvc commit` per stage, an MLflow parent run + a child run per stage with metrics and artifacts, model
  registration and the promotion gate).
Wall-clock of the whole process, so interpreter start-up and imports count on both sides.

    python benchmarks/orchestration.py [--json PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIRECT = """
import json, sys, time
from pathlib import Path
from flows.dvc_stages import read_stages
from flows.environment import working_directory
from flows.stage_task import call_stage
root = Path(sys.argv[1])
seconds = {}
with working_directory(root):
    for stage in read_stages(root).values():
        t0 = time.perf_counter()
        call_stage(root, stage.name)
        seconds[stage.name] = time.perf_counter() - t0
print("STAGES " + json.dumps(seconds))
"""
FLOW_STAGE = re.compile(r"^\[(?P<name>[\w-]+)\s*\] ran in (?P<seconds>[0-9.]+)s$", re.M)


def stage_seconds(stdout: str, direct: bool) -> float:
    """Seconds spent inside the stage commands themselves, as each side reports them."""
    if direct:
        line = [x for x in stdout.splitlines() if x.startswith("STAGES ")][-1]
        return sum(json.loads(line[len("STAGES "):]).values())
    return sum(float(m["seconds"]) for m in FLOW_STAGE.finditer(stdout))


def make_project(where: Path) -> Path:
    repo = where / "project"
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copy(ROOT / "dvdm" / "presets" / "tiny.yaml", repo / "params.yaml")  # the main job moved to "default"
    for folder in ("dvdm", "serving"):
        shutil.copytree(ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b", "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=repo, env=env, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, env=env, check=True)
    return repo


def timed(cmd: list[str], cwd: Path, env: dict, direct: bool) -> tuple[float, float]:
    """(whole process, inside the stage commands) in seconds."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return seconds, stage_seconds(r.stdout, direct)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--repeats", type=int, default=3,
                    help="alternating direct/flow pairs; the first flow run also creates the Prefect and MLflow "
                         "databases (a one-time cost), later ones are the steady state")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dvdm-bench-orch-"))
    try:
        repo = make_project(tmp)
        env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect"), "DVDM_WORK_DIR": str(repo / "work")}
        env.pop("MLFLOW_TRACKING_URI", None)
        dvdm = str(Path(sys.executable).parent / "dvdm")
        direct, flow, direct_stages, flow_stages = [], [], [], []
        for i in range(args.repeats):
            total, stages = timed([sys.executable, "-c", DIRECT, str(repo)], repo, env, direct=True)
            direct.append(total)
            direct_stages.append(stages)
            print(f"direct run {i + 1}: {total:.1f}s (stages {stages:.1f}s)", file=sys.stderr)
            total, stages = timed([dvdm, "pipeline", "--project", str(repo), "--force"], repo, env, direct=False)
            flow.append(total)
            flow_stages.append(stages)
            print(f"flow run {i + 1}: {total:.1f}s (stages {stages:.1f}s)", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = statistics.median
    d, d_stages = med(direct), med(direct_stages)
    first = flow[0]
    steady = med(flow[1:]) if len(flow) > 1 else flow[0]
    steady_stages = med(flow_stages[1:]) if len(flow) > 1 else flow_stages[0]
    overhead = steady - d
    print(f"{'mode':24s} {'runs':>4s} {'seconds':>8s} {'in stages':>10s} {'outside':>8s} {'overhead':>9s}")
    print(f"{'direct (median)':24s} {len(direct):4d} {d:8.1f} {d_stages:10.1f} {d - d_stages:8.1f} {'':>9s}")
    print(f"{'flow, first run':24s} {1:4d} {first:8.1f} {flow_stages[0]:10.1f} {first - flow_stages[0]:8.1f} "
          f"{100 * (first - d) / d:8.1f}%")
    if len(flow) > 1:
        print(f"{'flow, steady (median)':24s} {len(flow) - 1:4d} {steady:8.1f} {steady_stages:10.1f} "
              f"{steady - steady_stages:8.1f} {100 * overhead / d:8.1f}%")
    print(f"orchestration + tracking + DVC overhead, steady state: {overhead:.1f}s = {100 * overhead / d:.1f}% of "
          f"the direct run (target < 10%); the first run also creates the Prefect and MLflow databases. "
          f"'in stages' = inside the stage commands, 'outside' = process start-up, imports, orchestration, "
          f"tracking, DVC and shutdown")
    if args.json:
        sys.path.insert(0, str(ROOT))
        from bench_json import write_results

        write_results(args.json, "orchestration", {"direct_seconds": direct, "flow_seconds": flow,
                               "direct_stage_seconds": direct_stages, "flow_stage_seconds": flow_stages,
                               "overhead_seconds": overhead, "overhead_percent": 100 * overhead / d,
                               "first_run_overhead_percent": 100 * (first - d) / d})
    return 0


if __name__ == "__main__":
    sys.exit(main())
