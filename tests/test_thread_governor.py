"""The thread governor trains at the thread count whose measured steps are faster, and re-checks."""

from __future__ import annotations

import time

import numpy as np
import torch

from dvdm.train.thread_governor import ThreadGovernor
from dvdm.train.trainer import Trainer, TrainConfig


def run(governor: ThreadGovernor, steps: int, seconds_per_step) -> list[int]:
    """Drive the governor through `steps` fake steps lasting `seconds_per_step(threads, step)`."""
    used = []
    for step in range(steps):
        governor.before_step(step)
        used.append(governor.threads)
        time.sleep(seconds_per_step(governor.threads, step))
        governor.after_step(step)
    return used


def test_keeps_all_threads_when_they_are_faster():
    set_calls = []
    gov = ThreadGovernor(2, period=20, probe=2, first_probe=2, set_threads=set_calls.append)
    used = run(gov, 35, lambda n, _s: 0.002 if n == 2 else 0.01)
    assert gov.choices and all(best == 2 for _, best, _ in gov.choices)
    assert used[-1] == 2 and set_calls[-1] == 2
    assert used.count(1) == 2 * 3    # two probes of (1 settling + 2 timed) steps at one thread, no more


def test_falls_back_to_one_thread_when_the_machine_gets_busy_and_returns_when_it_is_quiet():
    gov = ThreadGovernor(2, period=10, probe=2, first_probe=0, set_threads=lambda n: None)

    def busy_between_15_and_40(n, step):
        busy = 15 <= step < 40
        return (0.015 if n == 2 else 0.005) if busy else (0.003 if n == 2 else 0.009)

    # probes (2 counts x (1 settling + 2 timed) steps) start at steps 0, 15, 30, 45
    used = run(gov, 60, busy_between_15_and_40)
    assert used[6:15] == [2] * 9            # quiet: two threads
    assert used[21:30] == [1] * 9           # busy: one
    assert used[36:45] == [1] * 9
    assert used[51:] == [2] * 9             # quiet again: back to two
    assert [best for _, best, _ in gov.choices] == [2, 1, 1, 2]


def test_one_thread_machines_are_left_alone():
    calls = []
    gov = ThreadGovernor(1, set_threads=calls.append)
    run(gov, 30, lambda n, _s: 0.0)
    assert not gov.active and calls == [] and gov.choices == []


def _tiny_trainer(tmp_path, adaptive: bool) -> Trainer:
    model = torch.nn.Linear(4, 1)
    data = {"x": np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)}

    def loss_fn(model, batch, generator):
        return {"loss": model(batch["x"]).pow(2).mean()}

    cfg = TrainConfig(steps=5, batch_size=4, log_every=5, device="cpu", adaptive_threads=adaptive)
    return Trainer(model=model, loss_fn=loss_fn, data=data, config=cfg, out_dir=tmp_path, kind="test")


def test_trainer_governs_only_when_asked_and_the_count_is_not_fixed(tmp_path, monkeypatch):
    from dvdm.runtime import cpus

    # an earlier in-process CLI call may have run cpus.configure_process on this environment
    for name in ("OMP_NUM_THREADS", "DVDM_CPU_TUNING", cpus.CHOSEN_ENV):
        monkeypatch.delenv(name, raising=False)
    assert _tiny_trainer(tmp_path, adaptive=True).governor is not None
    assert _tiny_trainer(tmp_path, adaptive=False).governor is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")   # the user's fixed count
    assert _tiny_trainer(tmp_path, adaptive=True).governor is None
