"""The residual autoencoder: latent on the motion-vector grid, losses, the codec round-trip hook (closed
loop), and that it can learn (overfit a few synthetic clips)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dvdm.codec.compensate import grid_shape
from dvdm.codec.decompose import DecomposeConfig, decompose
from dvdm.codec.residuals import reconstruct
from dvdm.data.base import ClipSpec
from dvdm.data.synthetic import SyntheticSource
from dvdm.models.autoencoder import (
    AutoencoderConfig,
    ResidualAutoencoder,
    default_channel_mults,
    roundtrip_fn,
)
from dvdm.metrics.psnr import psnr


def tiny(block: int = 8, **kw) -> ResidualAutoencoder:
    torch.manual_seed(0)
    return ResidualAutoencoder(AutoencoderConfig(block=block, base_channels=kw.pop("base_channels", 4), **kw))


# -- config -------------------------------------------------------------------------------------------


def test_config_defaults_json_roundtrip_and_validation():
    cfg = AutoencoderConfig()
    assert (cfg.block, cfg.latent_channels, cfg.channel_mults) == (16, 5, (1, 2, 4, 4))
    assert default_channel_mults(8) == (1, 2, 4) and default_channel_mults(2) == (1,)
    assert default_channel_mults(32) == (1, 2, 4, 4, 4)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert AutoencoderConfig.from_dict(d) == cfg
    assert AutoencoderConfig.from_dict({"block": 8, "residual_scale": 16}).residual_scale == 16.0
    with pytest.raises(ValueError, match="latent_chanels"):
        AutoencoderConfig.from_dict({"latent_chanels": 4})
    for bad in ({"block": 12}, {"block": 1}, {"block": 8, "channel_mults": [1, 2]}, {"latent_channels": 0},
                {"residual_scale": 0}, {"out_clip": -1}, {"kl": "yes"}):
        with pytest.raises(ValueError):
            AutoencoderConfig.from_dict(bad)


# -- shapes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block,h,w", [(8, 64, 64), (16, 128, 128), (8, 37, 45), (16, 37, 45), (16, 20, 16),
                                       (2, 5, 3)])
def test_latent_lies_on_the_motion_vector_grid(block, h, w):
    model = tiny(block, latent_channels=5, num_res_blocks=0 if block == 16 else 1)
    r = torch.randn(2, 3, h, w) * 20
    z = model.encode(r)
    assert z.shape == (2, 5, *grid_shape(h, w, block)) == (2, *model.latent_shape(h, w))
    assert model.decode(z, (h, w)).shape == r.shape
    r_hat, z2, kl = model(r)
    assert r_hat.shape == r.shape and z2.shape == z.shape and float(kl) == 0.0


def test_37x45_with_block_8_gives_a_5x6_latent_and_bad_inputs_are_named():
    model = tiny(8)
    assert model.encode(torch.zeros(1, 3, 37, 45)).shape[-2:] == (5, 6)
    with pytest.raises(ValueError, match="does not match"):
        model.decode(torch.zeros(1, 5, 5, 6), (64, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model.encode(torch.zeros(1, 1, 8, 8))


def test_untrained_decoder_outputs_zero_residual_and_out_clip_bounds_output():
    model = tiny(8)
    assert torch.count_nonzero(model(torch.randn(1, 3, 16, 16) * 50)[0]) == 0  # = plain motion compensation
    model = tiny(8, out_clip=10.0)
    torch.nn.init.normal_(model.decoder.conv_out.weight, std=10.0)
    assert model(torch.randn(1, 3, 16, 16) * 50)[0].abs().max() <= 10.0


# -- losses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kl", [False, True])
def test_loss_terms_finite_and_kl_only_with_kl(kl):
    model = tiny(8, kl=kl)
    torch.nn.init.normal_(model.decoder.conv_out.weight, std=0.1)
    r = torch.randint(-255, 256, (3, 3, 24, 20)).float()
    out = model.loss(r)
    assert set(out) == {"total", "l1", "mse", "ssim", "kl"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.values())
    assert -1.0 <= float(out["ssim"]) <= 1.0 and float(out["l1"]) > 0 and float(out["mse"]) > 0
    base = out["l1"] + model.config.mse_weight * out["mse"] + model.config.ssim_weight * (1 - out["ssim"])
    if kl:
        assert float(out["kl"]) > 0
        expected = base + model.config.kl_weight * out["kl"]
    else:
        assert float(out["kl"]) == 0.0
        expected = base
    torch.testing.assert_close(out["total"], expected)
    out["total"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_kl_posterior_mean_in_eval_and_sampling_in_training():
    model = tiny(8, kl=True)
    torch.nn.init.normal_(model.decoder.conv_out.weight, std=0.1)
    r = torch.randn(2, 3, 16, 16) * 30
    model.eval()
    a, za, _ = model(r)
    b, zb, _ = model(r)
    torch.testing.assert_close(za, model.encode(r))
    torch.testing.assert_close(a, b)
    model.train()
    assert not torch.equal(model(r)[1], za)


# -- codec hook ---------------------------------------------------------------------------------------


def _clips(n: int, size: int = 64, seed: int = 0, textured: float = 0.5) -> list[np.ndarray]:
    src = SyntheticSource(ClipSpec(frames=16, height=size, width=size), num_train=n, num_val=0, num_test=0,
                          seed=seed, textured_background_prob=textured)
    return [c.frames for c in src]


def test_roundtrip_fn_is_deterministic_float32_and_matches_the_model():
    model = tiny(8)
    torch.nn.init.normal_(model.decoder.conv_out.weight, std=0.05)
    model.eval()
    res = np.random.default_rng(0).integers(-255, 256, (20, 28, 3)).astype(np.int16)
    fn = roundtrip_fn(model)
    out = fn(res)
    assert out.shape == res.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, fn(res))  # deterministic: the encoder loop and the decoder agree
    expected = model(torch.from_numpy(res.astype(np.float32)).permute(2, 0, 1)[None])[0][0].permute(1, 2, 0)
    np.testing.assert_allclose(out, expected.detach().numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="one"):
        fn(res[None])


def _top_crops(residual: np.ndarray, k: int, size: int = 32) -> torch.Tensor:
    """The k block-aligned size x size crops with the most residual energy, (k, 3, size, size) float."""
    r = torch.from_numpy(residual.astype(np.float32)).permute(0, 3, 1, 2)
    crops = r.unfold(2, size, size).unfold(3, size, size).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, size, size)
    return crops[crops.pow(2).flatten(1).sum(1).argsort(descending=True)[:k]].contiguous()


@pytest.fixture(scope="module")
def overfit() -> dict:
    """A small AE (block 8, latent 5, base 16) trained 300 Adam steps (lr 2e-3, batch 4) on the residuals of
    4 synthetic 64x64 clips, shared by the learning and closed-loop tests.

    It trains on the 8 32x32 crops with the most residual energy: most synthetic residual pixels are 0,
    and on all 60 full frames 300 steps gain only ~1.5 dB (it takes ~1500 steps, minutes on a CPU, to gain
    10 dB); on these crops 300 steps gain 10-13 dB in ~10 s (measured over 3 seeds and 1 or 2 threads;
    the paper's L1 + SSIM alone, mse_weight 0, gains ~7 dB)."""
    torch.manual_seed(0)
    clips = _clips(4)
    res = np.concatenate([decompose(v, DecomposeConfig(block=8, search=8)).residual for v in clips])
    r = _top_crops(res, 8)
    model = ResidualAutoencoder(AutoencoderConfig(block=8, latent_channels=5, base_channels=16))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        loss = model.loss(r[torch.randint(len(r), (4,), generator=g)])["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.inference_mode():
        r_hat = model(r)[0]
    return {"model": model, "clips": clips, "r": r, "r_hat": r_hat}


def test_autoencoder_can_overfit_a_few_clips(overfit):
    r, r_hat = overfit["r"], overfit["r_hat"]
    baseline = psnr(r.numpy(), np.zeros(r.shape))
    gained = psnr(r.numpy(), r_hat.numpy()) - baseline
    assert gained > 5.0, f"residual PSNR gained only {gained:.1f} dB over the all-zero residual ({baseline:.1f} dB)"


def test_roundtrip_runs_the_autoencoder_in_the_closed_codec_loop(overfit):
    model = overfit["model"]
    fn = roundtrip_fn(model, device="cpu")
    cfg = DecomposeConfig(block=8, search=8)
    frames_all, closed_all, open_all = [], [], []
    for frames in overfit["clips"]:
        closed = decompose(frames, cfg, roundtrip=fn)
        assert closed.residual.dtype == np.int16 and np.abs(closed.residual).max() <= 255
        # the decoder side, from (first frame, MVs, decoded residuals), sees what the encoder loop saw
        decoded = np.stack([fn(r) for r in closed.residual])
        recon = reconstruct(closed.first_frame, closed.mv, decoded, cfg.block)
        # no drift: each frame's error is at most the AE's one-step error on that frame's residual
        one_step = np.abs(closed.residual - np.rint(decoded))
        assert (np.abs(frames[1:].astype(np.int16) - recon[1:]) <= one_step).all()
        # open loop: raw residuals against the original frames, decoded by the AE; errors accumulate
        opened = decompose(frames, cfg)
        recon_open = reconstruct(opened.first_frame, opened.mv, np.stack([fn(r) for r in opened.residual]),
                                 cfg.block)
        frames_all.append(frames[1:])
        closed_all.append(recon[1:])
        open_all.append(recon_open[1:])
    v, c, o = np.stack(frames_all), np.stack(closed_all), np.stack(open_all)
    assert psnr(v, c) > psnr(v, o) + 1.0
    late = slice(-5, None)  # the last 5 frames: where open-loop drift has piled up
    assert psnr(v[:, late], c[:, late]) > psnr(v[:, late], o[:, late]) + 1.0


def test_zero_residual_codec_is_plain_motion_compensation_in_the_loop():
    """An untrained AE decodes every residual to 0 (zero-initialised output conv), so the closed loop must
    give exactly the motion-compensated prediction chain (search against the reconstruction)."""
    frames = _clips(1)[0]
    cfg = DecomposeConfig(block=8, search=8)
    fn = roundtrip_fn(tiny(8))
    d = decompose(frames, cfg, roundtrip=fn)
    zero = decompose(frames, cfg, roundtrip=lambda r: np.zeros(r.shape, np.float32))
    np.testing.assert_array_equal(d.mv, zero.mv)
    np.testing.assert_array_equal(d.residual, zero.residual)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    model = tiny(8).cuda().eval()
    fn = roundtrip_fn(model)
    out = fn(np.zeros((20, 24, 3), np.int16))
    assert out.shape == (20, 24, 3) and out.dtype == np.float32
    assert model.loss(torch.randn(2, 3, 16, 16, device="cuda"))["total"].isfinite()
