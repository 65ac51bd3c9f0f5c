"""Thread pools sized to the CPUs a process may use, without spin-waiting (dvdm.runtime.cpus)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dvdm.runtime import cpus


def cgroup(tmp_path, v2: str | None = None, v1: tuple[int, int] | None = None):
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return tmp_path


def affinity() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize("v2, v1, quota", [
    ("max 100000", None, None),            # cgroup v2, unlimited
    ("150000 100000", None, 1.5),          # docker --cpus 1.5
    (None, (50000, 100000), 0.5),          # cgroup v1 quota
    (None, (-1, 100000), None),            # cgroup v1, unlimited
    (None, None, None),                    # no cgroup files
    ("garbage", None, None),
])
def test_quota_from_cgroup_files(tmp_path, v2, v1, quota):
    assert cpus._cgroup_quota(cgroup(tmp_path, v2, v1)) == quota


def test_available_cpus_takes_the_smaller_of_affinity_and_quota_rounded_up(tmp_path):
    assert cpus.available_cpus(cgroup(tmp_path, "max 100000")) == affinity()
    assert cpus.available_cpus(cgroup(tmp_path, "50000 100000")) == 1            # half a CPU is still one thread
    assert cpus.available_cpus(cgroup(tmp_path, f"{100000 * (affinity() + 8)} 100000")) == affinity()


def test_configure_process_sets_threads_unless_set(tmp_path):
    root = cgroup(tmp_path, "100000 100000")
    env: dict[str, str] = {}
    cpus.configure_process(env, root)
    assert env == {"OMP_NUM_THREADS": "1", cpus.CHOSEN_ENV: "1"}
    assert cpus.threads_adjustable(env)
    env = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}
    cpus.configure_process(env, root)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "7"}   # the user's settings win
    assert not cpus.threads_adjustable(env)                                 # and the count stays fixed
    assert not cpus.threads_adjustable({"OMP_NUM_THREADS": "2", cpus.CHOSEN_ENV: "1"})
    assert cpus.threads_adjustable({})
    assert not cpus.threads_adjustable({cpus.TUNING_ENV: "off"})
    env = {cpus.TUNING_ENV: "off"}
    cpus.configure_process(env, root)
    assert env == {cpus.TUNING_ENV: "off"}


def test_torchrun_processes_share_the_cpus(tmp_path):
    root = cgroup(tmp_path, f"{100000 * 8} 100000")
    n = min(affinity(), 8)
    assert cpus.process_threads({"LOCAL_WORLD_SIZE": "2"}, root) == max(1, n // 2)
    assert cpus.process_threads({"LOCAL_WORLD_SIZE": "64"}, root) == 1
    assert cpus.process_threads({"LOCAL_WORLD_SIZE": "x"}, root) == n


def test_onnxruntime_threads_and_spinning_follow_the_settings():
    assert cpus.ort_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert cpus.ort_threads({}) == cpus.available_cpus()
    assert cpus.ort_threads({cpus.TUNING_ENV: "off", "OMP_NUM_THREADS": "3"}) is None
    assert not cpus.ort_spinning({})
    assert cpus.ort_spinning({"OMP_WAIT_POLICY": "active"})
    assert cpus.ort_spinning({cpus.TUNING_ENV: "off"})


def test_sessions_do_not_spin_by_default(monkeypatch):
    pytest.importorskip("onnxruntime")
    from dvdm.runtime.sessions import session_options

    monkeypatch.delenv(cpus.TUNING_ENV, raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    options = session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    with pytest.raises(Exception, match="does not have configuration"):  # forced on: onnxruntime's spinning
        session_options(spinning=True).get_session_config_entry("session.intra_op.allow_spinning")
    monkeypatch.setenv(cpus.TUNING_ENV, "off")
    assert session_options(spinning=False).get_session_config_entry("session.intra_op.allow_spinning") == "0"
    options = session_options()
    assert options.intra_op_num_threads == 0  # onnxruntime's own default
    with pytest.raises(Exception, match="does not have configuration"):
        options.get_session_config_entry("session.intra_op.allow_spinning")


def test_the_cli_configures_the_process_before_torch_loads():
    """`dvdm` sets the environment before anything imports torch: torch then sizes its pool from it."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", cpus.TUNING_ENV)}
    code = ("import os, sys; sys.argv = ['dvdm', 'version']\n"
            "from dvdm.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules\n"
            "import torch; print(os.environ['OMP_NUM_THREADS'], torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    threads, torch_threads = out.split()[-2:]
    assert int(threads) == cpus.available_cpus() == int(torch_threads)
