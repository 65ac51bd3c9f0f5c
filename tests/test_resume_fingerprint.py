"""A rerun resumes a training stage from its checkpoint only when the checkpoint's fingerprint (the stage's
params section + the content of its inputs) matches the rerun's; otherwise it starts over and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dvdm.config import TrainParams
from dvdm.stages.registry import PipelineStage
from dvdm.train.checkpoint import FINGERPRINT_KEY, resume_point, run_fingerprint, save_checkpoint


def _inputs(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "shards").mkdir(parents=True)
    (data / "shards" / "train-000.npz").write_bytes(b"clips")
    (data / "manifest.jsonl").write_text("{}\n")
    return data


def test_the_fingerprint_follows_settings_and_input_content(tmp_path):
    data = _inputs(tmp_path)
    base = run_fingerprint({"lr": 1e-3, "unet": {"base_channels": 8}}, [data])
    assert run_fingerprint({"unet": {"base_channels": 8}, "lr": 1e-3}, [data]) == base   # key order is no change
    assert run_fingerprint({"lr": 2e-3, "unet": {"base_channels": 8}}, [data]) != base
    (data / "__pycache__").mkdir()
    (data / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"bytecode")  # what .dvcignore leaves out
    assert run_fingerprint({"lr": 1e-3, "unet": {"base_channels": 8}}, [data]) == base
    (data / "shards" / "train-000.npz").write_bytes(b"clipz")
    assert run_fingerprint({"lr": 1e-3, "unet": {"base_channels": 8}}, [data]) != base
    assert run_fingerprint({}, [data]) != run_fingerprint({}, [data, tmp_path / "missing"])


def _checkpoint(path: Path, step: int, fingerprint: str | None) -> Path:
    import torch

    config = {FINGERPRINT_KEY: fingerprint} if fingerprint else {}
    return save_checkpoint(path, kind="dvdm-test", config=config, weights={"model": {"w": torch.zeros(1)}},
                           trainer_state={"step": step}, step=step)


def test_resume_point_needs_a_matching_fingerprint(tmp_path):
    assert resume_point(tmp_path / "none", "abc") == (None, f"no checkpoint at {tmp_path / 'none'}")
    ckpt = _checkpoint(tmp_path / "ckpt", 7, "abc")
    assert resume_point(ckpt, "abc")[0] == 7
    step, why = resume_point(ckpt, "def")
    assert step is None and "settings or inputs changed" in why and "step 7" in why
    old = _checkpoint(tmp_path / "old", 3, None)              # written before checkpoints had a fingerprint
    assert resume_point(old, "abc")[0] is None
    (ckpt / "trainer_state.pt").unlink()
    assert resume_point(ckpt, "abc")[0] is None


@pytest.fixture
def stage(tmp_path):
    """A resumable stage whose function records how it was called (and writes a checkpoint like a trainer)."""
    calls: list[dict] = []

    def train(params, paths, resume=False, fingerprint=None):
        calls.append({"resume": resume, "fingerprint": fingerprint})
        _checkpoint(Path(paths["out"]) / "checkpoint", 5, fingerprint)

    entry = PipelineStage("train-x", "train", "train", {"in": "data", "out": "model"}, train, resumable=True)
    return entry, calls


def test_a_rerun_resumes_only_with_unchanged_settings_and_inputs(tmp_path, stage, caplog):
    entry, calls = stage
    caplog.set_level("WARNING", logger="dvdm.stages.registry")
    data = _inputs(tmp_path)
    paths = {"in": data, "out": tmp_path / "model"}
    entry.run(TrainParams(steps=10), paths, resume=True)        # nothing to resume from yet: a fresh start
    entry.run(TrainParams(steps=10), paths, resume=True)        # same settings, same data: resumes
    assert "train-x: resuming from step 5" in caplog.text
    entry.run(TrainParams(steps=10, lr=0.123), paths, resume=True)   # other settings: starts over
    assert "starting over, not resuming: the settings or inputs changed" in caplog.text
    (data / "manifest.jsonl").write_text('{"changed": true}\n')
    entry.run(TrainParams(steps=10, lr=0.123), paths, resume=True)   # other data: starts over
    entry.run(TrainParams(steps=10, lr=0.123), paths, resume=False)  # not asked to resume
    assert [c["resume"] for c in calls] == [False, True, False, False, False]
    assert len({c["fingerprint"] for c in calls}) == 3
    assert calls[0]["fingerprint"] == calls[1]["fingerprint"] and calls[3]["fingerprint"] == calls[4]["fingerprint"]
    config = json.loads((tmp_path / "model" / "checkpoint" / "config.json").read_text())
    assert config[FINGERPRINT_KEY] == calls[-1]["fingerprint"]   # the checkpoint records its run's fingerprint


def test_a_trainer_checkpoint_records_the_fingerprint(tmp_path):
    import torch

    from dvdm.train.trainer import TrainConfig, Trainer

    model = torch.nn.Linear(2, 1)
    trainer = Trainer(model, lambda m, b, g: {"loss": m(b["x"]).pow(2).mean()}, {"x": torch.ones(4, 2)},
                      TrainConfig(steps=2, batch_size=2, log_every=1, device="cpu"), tmp_path, kind="dvdm-test",
                      fingerprint="f" * 64)
    path = trainer.fit()
    assert resume_point(path, "f" * 64)[0] == 2
