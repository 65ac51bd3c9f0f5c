"""Stages and the CLI end to end on tiny synthetic data, plus every bad input of the issue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dvdm.config import DecomposeParams, IngestParams, section
from dvdm.data.shards import ShardedDataset
from dvdm.errors import ConfigError
from dvdm.stages.decompose import run_decompose
from dvdm.stages.ingest import run_ingest

TINY = {"num_train": 6, "num_val": 2, "num_test": 2, "seed": 1}


def dvdm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (as a user would)."""
    return subprocess.run([sys.executable, "-m", "dvdm", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stages") / "ingested"
    run_ingest(IngestParams(frames=16, options=TINY, clips_per_shard=4), out)
    return out


def test_ingest_writes_shards_and_manifest(ingested):
    data = ShardedDataset(ingested)
    assert data.splits() == {"train": 6, "val": 2, "test": 2}
    shards = sorted(p.name for p in (ingested / "shards").iterdir())
    assert shards == ["test-00000.npz", "train-00000.npz", "train-00001.npz", "val-00000.npz"]
    rec, arrays = next(data.iter_examples("train"))
    assert set(rec) >= {"id", "source", "caption", "split", "frames", "height", "width", "sha256", "provenance",
                        "labels", "shard", "index"}
    assert arrays["frames"].shape == (16, 64, 64, 3) and arrays["frames"].dtype == np.uint8
    from dvdm.data.shards import clip_sha256

    assert clip_sha256(arrays["frames"]) == rec["sha256"]
    summary = json.loads((ingested / "summary.json").read_text())
    assert summary["clips"] == 10


def test_decompose_stage_is_exact_and_reports_stats(ingested, tmp_path):
    stats = run_decompose(DecomposeParams(), ingested, tmp_path / "dec")
    assert stats["roundtrip_max_abs_error"] == 0 and stats["clips"] == 10
    assert stats["codec"]["block"] == 8 and stats["grid"] == [8, 8]
    hist = np.array(stats["motion_vectors"]["histogram"]["counts_dy_dx"])
    assert hist.sum() == 10 * 15 * 64
    data = ShardedDataset(tmp_path / "dec")
    rec, arrays = next(data.iter_examples())
    assert arrays["mv"].shape == (15, 8, 8, 2) and arrays["residual"].dtype == np.int16
    assert arrays["diff"].shape == (15, 64, 64, 3)
    from dvdm.codec.residuals import reconstruct

    frames = next(a["frames"] for r, a in ShardedDataset(ingested).iter_examples() if r["id"] == rec["id"])
    np.testing.assert_array_equal(reconstruct(arrays["first_frame"], arrays["mv"], arrays["residual"], 8), frames)


def test_params_sections_and_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump({"ingest": {"frames": 8, "options": {"num_train": 3}}}))
    cfg = section(p, "ingest", ["options.num_val=1", "height=32"])
    assert cfg.frames == 8 and cfg.height == 32 and cfg.options == {"num_train": 3, "num_val": 1}
    p.write_text(yaml.safe_dump({"ingest": {"framez": 8}}))
    with pytest.raises(ConfigError, match="unknown setting.*framez"):
        section(p, "ingest")
    p.write_text("ingest: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        section(p, "ingest")


def test_failed_stage_leaves_previous_output_untouched(ingested, tmp_path):
    out = tmp_path / "dec"
    run_decompose(DecomposeParams(), ingested, out)
    before = sorted(os.listdir(out))
    with pytest.raises(ConfigError):
        run_decompose(DecomposeParams(strategy="nope"), ingested, out)
    assert sorted(os.listdir(out)) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dec")]


# -- the CLI as users run it ------------------------------------------------------------------------------
def test_cli_inspect_json_and_pictures(tmp_path):
    from dvdm.video import write_mp4

    frames = np.stack([np.roll(np.tile(np.arange(48, dtype=np.uint8)[None, :, None] * 5, (40, 1, 3)), 2 * k, axis=1)
                       for k in range(10)])
    write_mp4(tmp_path / "clip.mp4", frames, fps=10)
    out = tmp_path / "inspect"
    r = dvdm("inspect", str(tmp_path / "clip.mp4"), "--block", "8", "--search", "4", "--json", "--out", str(out),
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["frames"] == 10 and (report["height"], report["width"]) == (40, 48)
    assert report["block"] == 8 and report["mv_grid"] == [5, 6]
    assert report["roundtrip_max_abs_error"] == 0 and "residual_mean_abs" in report
    assert {Path(p).name for p in report["outputs"]} == {"inspect.png", "inspect.mp4", "motion_field.png",
                                                         "residual.png"}
    r = dvdm("inspect", str(tmp_path / "clip.mp4"), "--mv-source", "ffmpeg", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["roundtrip_max_abs_error"] == 0


def _assert_clean_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stderr.startswith("error: "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def test_cli_bad_inputs_give_one_line_errors(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(os.urandom(2048))
    (tmp_path / "notes.txt").write_text("hello")
    _assert_clean_error(dvdm("inspect", "missing.mp4", cwd=tmp_path), "missing.mp4")
    _assert_clean_error(dvdm("inspect", "empty.mp4", cwd=tmp_path), "empty.mp4")
    _assert_clean_error(dvdm("inspect", "junk.mp4", cwd=tmp_path), "junk.mp4")
    _assert_clean_error(dvdm("inspect", "notes.txt", cwd=tmp_path), "notes.txt")
    _assert_clean_error(dvdm("decompose", "--in", "nowhere", "--out", "x", cwd=tmp_path), "nowhere")
    assert not (tmp_path / "x").exists()
    _assert_clean_error(dvdm("ingest", "--source", "nosuch", "--out", "y", cwd=tmp_path), "nosuch")
    _assert_clean_error(dvdm("ingest", "--set", "options.num_trian=3", "--out", "y", cwd=tmp_path), "num_trian")
    assert not (tmp_path / "y").exists()


def test_cli_truncated_video_and_short_clip(tmp_path):
    from dvdm.video import write_mp4

    frames = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    write_mp4(tmp_path / "full.mp4", frames, fps=10)
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    _assert_clean_error(dvdm("inspect", "cut.mp4", cwd=tmp_path), "cut.mp4")
    write_mp4(tmp_path / "one.mp4", frames[:1], fps=10)
    _assert_clean_error(dvdm("inspect", "one.mp4", cwd=tmp_path), "one.mp4")
    # a folder source whose clip is shorter than requested: named, non-zero, no output
    (tmp_path / "vids").mkdir()
    write_mp4(tmp_path / "vids" / "short.mp4", frames[:5], fps=10)
    (tmp_path / "vids" / "captions.csv").write_text("path,caption\nshort.mp4,a short clip\n")
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"ingest": {"source": "folder", "options": {
        "root": str(tmp_path / "vids"), "captions": str(tmp_path / "vids" / "captions.csv")}}}))
    _assert_clean_error(dvdm("ingest", "--params", str(params), "--out", "z", cwd=tmp_path), "short.mp4")
    assert not (tmp_path / "z").exists()


def test_cli_mixed_size_folder_and_bad_captions(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "000.png")
    Image.new("RGB", (32, 24)).save(folder / "001.png")
    _assert_clean_error(dvdm("inspect", str(folder), cwd=tmp_path), "001.png")

    from dvdm.video import write_mp4

    root = tmp_path / "vids"
    root.mkdir()
    write_mp4(root / "ok.mp4", np.zeros((20, 32, 32, 3), np.uint8), fps=10)
    for rows, needle in ((["../outside.mp4,escapes"], "outside the dataset root"),
                         (["ok.mp4,fine", "gone.mp4,missing"], "gone.mp4")):
        (root / "captions.csv").write_text("path,caption\n" + "\n".join(rows) + "\n")
        params = tmp_path / "p.yaml"
        params.write_text(yaml.safe_dump({"ingest": {"source": "folder", "options": {
            "root": str(root), "captions": str(root / "captions.csv")}}}))
        _assert_clean_error(dvdm("ingest", "--params", str(params), "--out", "out", cwd=tmp_path),
                            "captions.csv", needle)
        assert not (tmp_path / "out").exists()


def test_cli_sources_lists_every_source(tmp_path):
    r = dvdm("sources", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("synthetic", "folder", "bair", "mhad", "natops"):
        assert f"{name}:" in r.stdout


def test_cli_sample_bad_inputs(tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "frame.png")
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "weights.pt").write_bytes(b"\x80\x04not a checkpoint")
    base = ["sample", "--image", "frame.png", "--out", "v.mp4"]
    _assert_clean_error(dvdm(*base, "--model", "notamodel", cwd=tmp_path), "not a dvdm model", "manifest.json")
    _assert_clean_error(dvdm(*base, "--model", "weights.pt", cwd=tmp_path), "not a dvdm model: a file")
    _assert_clean_error(dvdm(*base, "--model", "models:/dvdm", cwd=tmp_path), "models:/dvdm@champion")
    _assert_clean_error(dvdm("sample", "--model", "notamodel", "--image", "missing.png", "--out", "v.mp4",
                             cwd=tmp_path), "missing.png")
    _assert_clean_error(dvdm("sample", "--model", "notamodel", "--image", "frame.png", "--out", "v.avi",
                             cwd=tmp_path), ".mp4 or .gif")
    _assert_clean_error(dvdm(*base, "--model", "notamodel", "--guidance", "99", cwd=tmp_path), "guidance")
    assert not (tmp_path / "v.mp4").exists()


def test_cli_sample_with_a_trained_model(tiny_model, tmp_path):
    """Resize notice, reproducible seed, and the bad inputs only a loaded model can check."""
    from PIL import Image

    from dvdm.video.reader import read_video

    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "big.png")
    r = dvdm("sample", "--model", str(tiny_model), "--image", "big.png", "--prompt", "a red square moves left",
             "--steps", "3", "--seed", "7", "--out", "a.mp4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resized from 48x40 to the model's 64x64" in r.stderr
    video = read_video(tmp_path / "a.mp4")
    assert video.frames.shape == (16, 64, 64, 3)

    _assert_clean_error(dvdm("sample", "--model", str(tiny_model), "--image", "big.png", "--steps", "101", "--prompt", "x",
                             "--out", "c.mp4", cwd=tmp_path), "--steps must be within 1..100")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    _assert_clean_error(dvdm("sample", "--model", str(tiny_model), "--image", "broken.png", "--out", "c.mp4",
                             cwd=tmp_path), "broken.png")
    assert not (tmp_path / "c.mp4").exists()
    _assert_clean_error(dvdm("sample", "--model", str(tiny_model), "--image", "big.png", "--precision", "fp16",
                             "--out", "c.mp4", "--device", "cpu", cwd=tmp_path), "fp16 needs a CUDA device")
    _assert_clean_error(dvdm("sample", "--model", str(tiny_model), "--image", "big.png", "--precision", "int8",
                             "--out", "c.mp4", cwd=tmp_path), "precision must be one of")
    # issue 13: a strip of an image would be scaled up to gigabytes; refused before any resize
    Image.new("RGB", (64000, 4), (0, 0, 0)).save(tmp_path / "strip.png")
    _assert_clean_error(dvdm("sample", "--model", str(tiny_model), "--image", "strip.png", "--out", "c.mp4",
                             cwd=tmp_path), "strip.png: a 4x64000 (HxW) frame is")
    assert not (tmp_path / "c.mp4").exists()
    assert not (tmp_path / "c.mp4").exists()


def test_bf16_sampling_stays_close_to_float32(tiny_model):
    """`precision="bf16"` autocasts the denoiser and the decoder; the sampler math stays float32, so the video
    lands close to the float32 one from the same seed."""
    import numpy as np
    import torch

    from dvdm.pipeline import VideoPipeline

    first = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    videos = {}
    for precision in ("fp32", "bf16"):
        pipe = VideoPipeline.from_checkpoint(tiny_model / "checkpoint", device="cpu", precision=precision)
        targets = pipe.sample_targets(first, ["a red square moves left"], steps=3, seeds=[5])
        assert targets.dtype == torch.float32
        videos[precision] = pipe.decode(targets, first).astype(np.float64)
    mse = np.mean((videos["fp32"] - videos["bf16"]) ** 2)
    assert mse == 0 or 10 * np.log10(255.0 ** 2 / mse) > 30.0


def test_default_preset_is_the_shipped_params(tmp_path):
    """`dvdm pipeline --preset default` must give exactly the params.yaml the README's main job uses."""
    root = Path(__file__).resolve().parents[1]
    assert (root / "dvdm" / "presets" / "default.yaml").read_text() == (root / "params.yaml").read_text()
    _assert_clean_error(dvdm("pipeline", "--preset", "huge", "--project", str(tmp_path), cwd=tmp_path),
                        "unknown", "tiny")
    assert not (tmp_path / "params.yaml").exists()


OVERRIDE_DICTS = {("ingest", "options"), ("train", "unet"), ("train", "diffusion")}  # defaults live elsewhere


def test_every_settings_default_is_the_default_preset():
    """One source of defaults: a key left out of params.yaml gets the main job's value (issue 12: train.steps
    was 1000 in the dataclass and 4800 in the preset, ema 0.999 vs 0.995, the gate metric fvd vs the
    prompt swap, ...). The three override dicts default to {} and the preset's are valid there."""
    import dataclasses

    from dvdm.config import SECTIONS, from_dict

    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvdm/presets/default.yaml").read_text())
    assert set(preset) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        defaults = dataclasses.asdict(cls())
        assert set(preset[name]) <= set(defaults), name
        for key, value in preset[name].items():
            if (name, key) in OVERRIDE_DICTS:
                assert defaults[key] == {}
            else:
                assert defaults[key] == value, f"{name}.{key}: dataclass {defaults[key]!r}, preset {value!r}"
        from_dict(cls, preset[name], name)
    # a params file with one key is the main job with that key changed
    assert section(None, "train", ["steps=10"]) == dataclasses.replace(SECTIONS["train"](), steps=10)
