"""The promotion gate as a pure function, and the model card: no MLflow store needed."""

from __future__ import annotations

import math

import pytest
import yaml

from dvdm.errors import ConfigError
from dvdm.tracking.errors import GateError
from dvdm.tracking.model_card import render_model_card, write_model_card
from dvdm.tracking.promotion import Gate, decide


def test_min_direction_with_margin():
    gate = Gate(metric="fvd", direction="min", margin=10.0)
    win = decide({"fvd": 180.0}, {"fvd": 200.0}, gate)
    assert win.promote and win.decided and (win.challenger_value, win.champion_value) == (180.0, 200.0)
    assert not decide({"fvd": 195.0}, {"fvd": 200.0}, gate).promote  # better, within the margin
    assert not decide({"fvd": 190.0}, {"fvd": 200.0}, gate).promote  # exactly the margin: not enough
    assert not decide({"fvd": 210.0}, {"fvd": 200.0}, gate).promote
    assert not decide({"fvd": 200.0}, {"fvd": 200.0}, Gate("fvd", "min")).promote  # a tie never promotes
    assert decide({"fvd": 199.9}, {"fvd": 200.0}, Gate("fvd", "min")).promote


def test_max_direction_and_relative_margin():
    gate = Gate(metric="psnr", direction="max", margin=0.5)
    assert decide({"psnr": 25.0}, {"psnr": 24.0}, gate).promote
    assert not decide({"psnr": 24.4}, {"psnr": 24.0}, gate).promote
    assert not decide({"psnr": 20.0}, {"psnr": 24.0}, gate).promote
    rel = Gate(metric="fvd", direction="min", margin=0.05, relative=True)  # 5% better than the champion
    assert decide({"fvd": 94.0}, {"fvd": 100.0}, rel).promote
    assert not decide({"fvd": 96.0}, {"fvd": 100.0}, rel).promote


def test_no_champion_promotes_and_records_values():
    d = decide({"fvd": 300.0}, None, Gate("fvd", "min"))
    assert d.promote and "no champion" in d.reason and d.champion_value is None
    assert d.to_dict()["challenger_value"] == 300.0 and d.to_dict()["metric"] == "fvd"


def test_missing_or_bad_metrics_are_clear_errors():
    with pytest.raises(GateError, match=r"challenger has no metric 'fvd' \(it has: psnr\)"):
        decide({"psnr": 20.0}, {"fvd": 1.0}, Gate("fvd", "min"))
    with pytest.raises(GateError, match="champion has no metric 'fvd'"):
        decide({"fvd": 1.0}, {"psnr": 20.0}, Gate("fvd", "min"))
    with pytest.raises(GateError, match="non-finite"):
        decide({"fvd": math.nan}, {"fvd": 1.0}, Gate("fvd", "min"))
    with pytest.raises(GateError, match="not a number"):
        decide({"fvd": "n/a"}, None, Gate("fvd", "min"))


def test_gate_settings_are_validated():
    with pytest.raises(ConfigError, match="direction"):
        Gate("fvd", direction="lower")
    with pytest.raises(ConfigError, match="margin"):
        Gate("fvd", "min", margin=-1.0)
    with pytest.raises(ConfigError, match="metric"):
        Gate(metric="", direction="min")


EVALUATION = {"split": "test", "n_clips": 8, "fvd": 312.5, "kvd": 4.25, "psnr": 24.1, "ssim": 0.81,
              "fvd_protocol": {"network": "I3D Kinetics-400", "n_real": 8, "n_fake": 8, "frames": 16,
                               "size": [224, 224], "weights_sha256": "ab" * 32},
              "fvd_notes": ["N is small: FVD is biased upwards"], "params": {"sampler": "ddim", "steps": 20}}


def test_model_card_has_every_section(tmp_path):
    card = render_model_card(model={"space": "mvres", "frames": 16, "height": 64, "width": 64},
                             data={"name": "synthetic", "description": "Moving shapes.", "dvc_hash": "abc.dir",
                                   "clips": {"train": 64, "test": 8}},
                             training={"steps": 300, "lr": 2e-4, "config": {"train": {"steps": 300}}},
                             evaluation=EVALUATION, version=3)
    body = card
    # the Hub's metadata is a fenced YAML block: as front matter, the MLflow UI's markdown would run it into
    # one heading line
    assert not card.startswith("---") and card.startswith("# Model card: dvdm v3\n")
    meta = yaml.safe_load(card.split("## Metadata", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0])
    assert meta["pipeline_tag"] == "image-to-video" and {"mvres", "ED-VDM"} <= set(meta["tags"])
    assert meta["datasets"] == ["synthetic"]
    for section in ("# Model card: dvdm v3", "## Model details", "## Intended use", "## Training data",
                    "## Training procedure", "## Evaluation", "### FVD protocol", "## Limitations and risks",
                    "## How to use", "## Metadata"):
        assert section in body, section
    assert "Method: **ED-VDM**." in body and "D-VDM" not in body.replace("ED-VDM", "")
    assert body.index("## Intended use") < body.index("## Training data") < body.index("## Evaluation")
    assert "| FVD (I3D), lower is better | 312.5 |" in body
    assert "| frames | 16 |" in body and "| n_real | 8 |" in body and "ab" * 32 in body
    assert "N is small" in body and "ED-VDM" in body and "| clips.train | 64 |" in body
    path = tmp_path / "README.md"
    write_model_card(path, model={}, data={}, training={}, evaluation={}, limitations=["Only a test."])
    text = path.read_text()
    assert "Not evaluated." in text and "- Only a test." in text


def test_model_card_says_why_fvd_is_missing():
    card = render_model_card(model={"space": "rgb"}, data={}, training={},
                             evaluation={"psnr": 20.0, "fvd_skipped": "clips have 8 frames"})
    assert "FVD was not computed: clips have 8 frames." in card


@pytest.mark.parametrize("space, method", [("mvres", "ED-VDM"), ("diff", "D-VDM"), ("rgb", "VDM baseline")])
def test_model_card_names_the_method_of_its_space(space, method):
    from dvdm.tracking.model_card import method_name

    assert method_name(space) == method and method_name("no-such-space") is None
    card = render_model_card(model={"space": space}, data={}, training={}, evaluation={})
    assert f"Method: **{method}**." in card and f"- {method}\n" in card  # details and the metadata's tags
