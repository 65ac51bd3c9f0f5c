"""The stage registry against dvc.yaml (so the flows and `dvc repro` run the same stage on the same paths),
and a stage run through its entry as the flow runs it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from dvdm.errors import ConfigError
from dvdm.stages.registry import PARAMS_FILE, STAGES, get_stage

REPO = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _names(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def test_registry_has_the_stages_of_dvc_yaml_in_order():
    assert list(STAGES) == list(DVC)


@pytest.mark.parametrize("name", list(DVC))
def test_stage_command_and_paths_agree_with_dvc_yaml(name):
    stage, body = STAGES[name], DVC[name]
    options = [word for key, path in stage.paths.items() for word in (f"--{key}", path)]
    assert shlex.split(body["cmd"]) == ["dvdm", stage.command, "--params", str(PARAMS_FILE), *options]
    assert body["params"] == [stage.section]
    deps, outs, metrics = _names(body.get("deps")), _names(body.get("outs")), _names(body.get("metrics"))
    for key, path in stage.paths.items():
        if key not in ("out", "metrics"):  # an input: DVC reruns the stage when it changes
            assert any(_within(dep, path) for dep in deps), (name, key, path, deps)
    # everything DVC caches or reads as a metric is what the stage writes: its output folder or metrics file
    for declared in outs + metrics:
        assert _within(declared, stage.paths["out"]) or declared == stage.paths.get("metrics"), (name, declared)
    if "metrics" in stage.paths:
        assert stage.paths["metrics"] in metrics


def test_resumability_is_a_property_of_the_stage():
    assert [s.name for s in STAGES.values() if s.resumable] == ["train-ae", "train-diffusion"]
    with pytest.raises(ConfigError, match="cannot resume"):
        get_stage("decompose").run(None, {}, resume=True)
    with pytest.raises(ConfigError, match="no pipeline stage 'train'"):
        get_stage("train")


def test_stages_run_from_the_project_root_with_its_params_file(tmp_path, monkeypatch):
    """What a flow task does: the project's params file and the declared (relative) paths."""
    from dvdm.stages.decompose import headline_metrics

    monkeypatch.chdir(tmp_path)
    PARAMS_FILE.write_text(yaml.safe_dump({"ingest": {"frames": 8, "options": {"num_train": 2, "num_val": 1,
                                                                                "num_test": 1}}}))
    results = {}
    for name in ("ingest", "decompose"):
        stage = get_stage(name)
        results[name] = stage.run(stage.load_params(PARAMS_FILE), {key: stage.path(key) for key in stage.paths})
    assert results["ingest"]["clips"] == 4 and Path("data/ingested/summary.json").is_file()
    written = json.loads(Path("metrics/decompose.json").read_text())
    assert written == json.loads(json.dumps(headline_metrics(results["decompose"])))


def test_every_stage_command_is_the_dvc_yaml_command():
    """A placed stage runs `dvdm <arguments()>` on its worker; `dvc repro` runs dvc.yaml's cmd: the same."""
    from dvdm.stages.registry import STAGES

    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    for name, stage in STAGES.items():
        assert shlex.split(stages[name]["cmd"]) == ["dvdm", *stage.arguments()], name
