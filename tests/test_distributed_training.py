"""Data-parallel training under a real `torchrun` (2 gloo processes on this CPU): the same model as one
process at the same global batch, resume from rank 0's checkpoint, one log, and the CLI stage under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny_project import REPO

pytestmark = pytest.mark.slow
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
JOB = str(REPO / "tests" / "ddp_job.py")


def run(cmd: list[str], cwd: Path | None = None, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1", **env_extra}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def assert_same_weights(a: dict, b: dict, atol: float = 1e-4) -> None:
    """Equal up to the gradient all-reduce's summation order, which Adam's normalisation amplifies for
    near-zero gradients: atol is a tenth of one optimizer step at lr 1e-3 (a different random draw, or a
    different batch, moves a weight by about lr on the first step)."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-3, msg=lambda m: f"{key}: {m}")


def final(folder: Path) -> dict:
    return torch.load(folder / "final.pt", weights_only=True)


def test_two_processes_train_what_one_process_trains_and_resume(tmp_path):
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    for d in (one, two, resumed):
        d.mkdir()
    run([sys.executable, JOB, str(one), "6"])
    run([*TORCHRUN, JOB, str(two), "6"])
    a, b = final(one), final(two)
    assert a["step"] == b["step"] == 6
    assert_same_weights(a["model"], b["model"])
    assert_same_weights(a["ema"], b["ema"])
    # rank 0 alone logs: one line per step, with the loss of the whole global batch
    lines_one = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    lines_two = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines_two] == list(range(1, 7))
    for x, y in zip(lines_one, lines_two):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)

    # stop at step 3 (a checkpoint), then a new torchrun resumes from rank 0's checkpoint to step 6
    run([*TORCHRUN, JOB, str(resumed), "3"])
    assert json.loads((resumed / "checkpoint" / "config.json").read_text())
    run([*TORCHRUN, JOB, str(resumed), "6", "--resume"])
    c = final(resumed)
    assert c["step"] == 6
    assert_same_weights(c["model"], b["model"], atol=1e-6)
    assert_same_weights(c["ema"], b["ema"], atol=1e-6)


def test_the_train_stage_under_torchrun_matches_one_process(tmp_path):
    """`torchrun -m dvdm train` (the CLI the GPU pool's job template launches) on tiny ingested data."""
    from tests.tiny_project import tiny_project

    project = tiny_project(tmp_path / "p")
    run([sys.executable, "-m", "dvdm", "ingest", "--params", "params.yaml"], cwd=project)
    common = ["train", "--space", "diff", "--params", "params.yaml", "--in", "data/ingested",
              "--set", "steps=4", "--set", "batch_size=4", "--set", "sample_every=0", "--set", "checkpoint_every=2"]
    single = run([sys.executable, "-m", "dvdm", *common, "--out", "models/one"], cwd=project)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    double = run([*TORCHRUN, "-m", "dvdm", *common, "--out", "models/two"], cwd=project, TMPDIR=str(scratch))
    assert "denoiser trained for 4 steps" in single.stdout
    assert double.stdout.count("denoiser trained for 4 steps") == 1  # one report, from rank 0

    from safetensors.torch import load_file

    for name in ("model", "ema"):
        assert_same_weights(load_file(project / "models/one/checkpoint" / f"{name}.safetensors"),
                            load_file(project / "models/two/checkpoint" / f"{name}.safetensors"))
    m1 = json.loads((project / "models/one/results.json").read_text())
    m2 = json.loads((project / "models/two/results.json").read_text())
    assert m2["steps"] == 4 and m2["val_loss"] == pytest.approx(m1["val_loss"], rel=1e-3)
    assert not list(scratch.glob("dvdm-train-data-*"))  # the ranks' shared training arrays are removed


def test_the_train_ae_stage_under_torchrun_matches_one_process(tmp_path):
    """`torchrun -m dvdm train-ae`: each process writes the residual frames of its share of the clips into the
    shared training arrays; the model equals one process's at the same global batch."""
    from tests.tiny_project import tiny_project

    project = tiny_project(tmp_path / "p")
    run([sys.executable, "-m", "dvdm", "ingest", "--params", "params.yaml"], cwd=project)
    run([sys.executable, "-m", "dvdm", "decompose", "--params", "params.yaml", "--in", "data/ingested",
         "--out", "data/decomposed", "--metrics", "metrics/decompose.json"], cwd=project)
    common = ["train-ae", "--params", "params.yaml", "--in", "data/decomposed", "--set", "steps=3",
              "--set", "batch_size=4", "--set", "log_every=1"]
    run([sys.executable, "-m", "dvdm", *common, "--out", "models/one"], cwd=project)
    run([*TORCHRUN, "-m", "dvdm", *common, "--out", "models/two"], cwd=project)

    # The same batches: the loss of every step is the single process's (step 1, before any update, to float
    # precision). The tiny clips' residuals are almost all zero, so the L1 loss's gradient is the sign of
    # near-zero errors, which summation order flips, and Adam scales each flipped element to a full step
    # (lr = 1e-3): a few weights differ by about a step, the mean difference stays small. Other data or other
    # batches would move almost every weight by about a step.
    logs = [[json.loads(x) for x in (project / f"models/{n}/metrics.jsonl").read_text().splitlines()]
            for n in ("one", "two")]
    assert [r["step"] for r in logs[1]] == [1, 2, 3]
    assert logs[1][0]["loss"] == pytest.approx(logs[0][0]["loss"], rel=1e-6)
    for x, y in zip(*logs):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-3)
    from safetensors.torch import load_file

    for name in ("model", "ema"):
        a = load_file(project / "models/one/checkpoint" / f"{name}.safetensors")
        b = load_file(project / "models/two/checkpoint" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
        assert float(diff.mean()) < 5e-5, f"{name}: mean |diff| {float(diff.mean()):.2e}"
    m1 = json.loads((project / "models/one/results.json").read_text())
    m2 = json.loads((project / "models/two/results.json").read_text())
    assert m2["train_frames"] == m1["train_frames"] > 0
