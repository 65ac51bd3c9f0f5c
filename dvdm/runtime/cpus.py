"""How many CPUs this process may really use, and thread pools that do not fight other work for them.

Two defaults of the numeric libraries hurt on shared machines (laptops, CI runners, busy GPU hosts):
- they size their thread pools from the machine's cores, not from the CPUs this process may run on
  (`taskset`/cpusets) or its cgroup quota (`docker --cpus`, Kubernetes limits);
- OpenMP (torch's intra-op pool) and ONNX Runtime spin-wait between parallel regions: a thread that shares
  its core with another process burns the slice it is given waiting for its siblings, so every region
  waits for the slowest thread twice over.

`configure_process` sizes torch's pool through the environment, before torch is imported; ONNX Runtime
sessions get the same count and no spin-waiting (`ort_threads`, `ort_spinning`). OpenMP keeps its own
waiting policy (see `configure_process` for why). A setting the
user made in the environment wins; `DVDM_CPU_TUNING=off` leaves everything at the libraries' defaults.
"""

from __future__ import annotations

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

TUNING_ENV = "DVDM_CPU_TUNING"  # "off": no thread sizing, no passive waiting (the libraries' defaults)
# the OMP_NUM_THREADS value configure_process chose (inherited by child processes, e.g. DVC's stage commands),
# to tell it from a count the user fixed
CHOSEN_ENV = "DVDM_CHOSEN_OMP_NUM_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def tuning_enabled(environ: MutableMapping[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(TUNING_ENV, "on").strip().lower() not in ("off", "0", "false", "no")


def _cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup quota allows (cgroup v2 cpu.max, else v1 cfs files); None if unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """The CPUs this process may run on (affinity), capped by the cgroup's CPU quota rounded up; >= 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def process_threads(environ: MutableMapping[str, str] | None = None, root: Path = CGROUP_ROOT) -> int:
    """Intra-op threads for one process: the available CPUs, shared among torchrun's processes on a machine."""
    environ = os.environ if environ is None else environ
    try:
        local_world = max(1, int(environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local_world = 1
    return max(1, available_cpus(root) // local_world)


def configure_process(environ: MutableMapping[str, str] | None = None, root: Path = CGROUP_ROOT) -> None:
    """An intra-op thread count from `process_threads`, unless already set.

    Call before torch is imported: torch sizes its pool from OMP_NUM_THREADS when it loads.
    """
    environ = os.environ if environ is None else environ
    if not tuning_enabled(environ):
        return
    # OpenMP keeps its default spin-then-sleep waiting: fully passive waiting (OMP_WAIT_POLICY=PASSIVE)
    # halved the busy-machine slowdown of tiny training but made it 1.6-1.75x slower on a quiet machine
    # (benchmarks/busy_machine.py, docs/DECISIONS.md); users on shared hosts can still set it.
    if "OMP_NUM_THREADS" not in environ:
        environ["OMP_NUM_THREADS"] = environ[CHOSEN_ENV] = str(process_threads(environ, root))


def threads_adjustable(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether dvdm may change the intra-op thread count at run time (`dvdm.train.thread_governor`): tuning is
    on and the count is not one the user fixed in OMP_NUM_THREADS."""
    environ = os.environ if environ is None else environ
    if not tuning_enabled(environ):
        return False
    fixed = environ.get("OMP_NUM_THREADS")
    return fixed is None or environ.get(CHOSEN_ENV) == fixed


def ort_threads(environ: MutableMapping[str, str] | None = None) -> int | None:
    """ONNX Runtime intra-op threads: OMP_NUM_THREADS when set, else the available CPUs; None when tuning is
    off (onnxruntime's default: every core)."""
    environ = os.environ if environ is None else environ
    if not tuning_enabled(environ):
        return None
    try:
        return max(1, int(environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return available_cpus()


def ort_spinning(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether ONNX Runtime's thread pool may spin-wait: only when tuning is off or OMP_WAIT_POLICY=ACTIVE."""
    environ = os.environ if environ is None else environ
    return not tuning_enabled(environ) or environ.get("OMP_WAIT_POLICY", "").strip().upper() == "ACTIVE"
