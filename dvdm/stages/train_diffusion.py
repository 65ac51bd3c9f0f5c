"""Stage `train-diffusion`: the denoiser for one target space (rgb = VDM, diff = D-VDM, mvres = ED-VDM).

Targets are encoded once (ED-VDM runs the codec with the trained autoencoder in the loop), normalised
with statistics measured on the training clips (saved with the model), and the denoiser learns them
conditioned on the first frame and, when the data has captions, on the frozen MiniLM sentence embedding
(dropped with `cond_drop_prob` for classifier-free guidance).
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dvdm.config import TrainParams, as_dict
from dvdm.data.shards import ShardedDataset
from dvdm.diffusion import GaussianDiffusion
from dvdm.errors import ConfigError, DataError
from dvdm.models import UNet3D, UNetConfig
from dvdm.pipeline import VideoPipeline, image_to_tensor
from dvdm.spaces import TargetSpace, build_space, space_class
from dvdm.train.trainer import JsonlMetrics, TrainConfig, Trainer
from dvdm.utils.atomic import write_json

def encode_split(data: ShardedDataset, split: str, space: TargetSpace, limit: int = 0):
    """Raw targets, first frames and captions of a split (at most `limit` clips when > 0)."""
    raws, firsts, captions, originals = [], [], [], []
    for record, arrays in data.iter_examples(split):
        frames = arrays["frames"]
        raws.append(space.encode(frames))
        firsts.append(frames[0])
        captions.append(record["caption"])
        originals.append(frames)
        if limit and len(raws) >= limit:
            break
    return raws, firsts, captions, originals


def motion_check(pipe: VideoPipeline, frames: list, params: TrainParams) -> float:
    """Direction accuracy of a quick prompt swap (8 directions at the middle speed) on a few first frames."""
    from dvdm.evaluate.prompt_swap import run_prompt_swap

    res = run_prompt_swap(lambda im, pr, se: pipe(im, pr, steps=params.sample_steps, guidance=params.guidance,
                                                  seeds=se), frames, batch_size=8 * len(frames), speeds=[1])
    return res["direction_accuracy"]


def build_diffusion(cfg: dict[str, Any]) -> GaussianDiffusion:
    """The noise process of `train.diffusion` (what is not set takes `GaussianDiffusion.create`'s defaults)."""
    known = [name for name in inspect.signature(GaussianDiffusion.create).parameters if name != "cls"]
    unknown = set(cfg) - set(known)
    if unknown:
        raise ConfigError(f"train.diffusion: unknown setting(s) {', '.join(sorted(unknown))}; known: "
                          f"{', '.join(known)}")
    try:
        return GaussianDiffusion.create(**cfg)
    except ValueError as exc:
        raise ConfigError(f"train.diffusion: {exc}") from None


def build_training_space(params: TrainParams, autoencoder_dir: str | Path | None
                         ) -> tuple[TargetSpace, dict[str, Any] | None, dict[str, torch.Tensor]]:
    """The space to train in, plus the autoencoder's config and weights to save with the denoiser when the
    space is built around the trained residual codec."""
    settings: dict[str, Any] = {"reference": params.diff_reference, "dead_zone": params.dead_zone}
    if not space_class(params.space).needs_codec:
        return build_space(params.space, **settings), None, {}
    if autoencoder_dir is None:
        raise ConfigError(f"space {params.space} needs a trained residual autoencoder (--autoencoder DIR from "
                          f"train-ae)")
    from dvdm.spaces.ae_codec import AutoencoderResidualCodec
    from dvdm.stages.train_ae import autoencoder_search_settings, load_autoencoder

    ae = load_autoencoder(autoencoder_dir)
    # encode with the motion search the autoencoder's residuals came from (decompose's settings)
    settings.update(autoencoder_search_settings(autoencoder_dir))
    space = build_space(params.space, codec=AutoencoderResidualCodec(ae, "cpu"), **settings)
    return space, as_dict(ae.config), {"autoencoder": ae.state_dict()}


def run_train_diffusion(params: TrainParams, ingested_dir: str | Path, out_dir: str | Path,
                        autoencoder_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    out_dir = Path(out_dir)
    data = ShardedDataset(Path(ingested_dir))
    if not data.records:
        raise DataError(f"{ingested_dir}: no clips")
    t, h, w = data.records[0]["frames"], data.records[0]["height"], data.records[0]["width"]
    torch.manual_seed(params.seed)

    space, ae_config, ae_weights = build_training_space(params, autoencoder_dir)

    started = time.perf_counter()
    raws, firsts, captions, _ = encode_split(data, "train", space, params.max_clips)
    if not raws:
        raise DataError(f"{ingested_dir}: no clips in the train split")
    space.fit_normalizer(raws)
    eval_split = "val" if data.splits()["val"] else "test"
    e_raws, e_firsts, e_captions, e_frames = encode_split(data, eval_split, space, 4)
    encode_seconds = time.perf_counter() - started

    use_text = params.text and any(c.strip() for c in captions)
    # a periodic prompt-swap check while training, when the held-out clips carry synthetic motion labels
    check_frames = []
    if use_text and params.check_clips:
        from dvdm.evaluate.prompt_swap import held_out_first_frames

        pairs = [(r, a["frames"]) for (r, a), _ in zip(data.iter_examples(eval_split), range(params.check_clips))]
        check_frames = held_out_first_frames([r for r, _ in pairs], [c for _, c in pairs], params.check_clips)
    text_encoder = None
    tensors: dict[str, torch.Tensor] = {
        "x0": torch.from_numpy(np.stack([space.normalize(r) for r in raws])),
        "first_frame": image_to_tensor(np.stack(firsts), torch.device("cpu")),
    }
    if use_text:
        from dvdm.models import TextEncoder

        text_encoder = TextEncoder()
        tensors["text"] = text_encoder.encode(captions).float().cpu()

    unet_cfg = {"in_channels": space.channels, "out_channels": space.channels,
                "text_dim": text_encoder.dim if text_encoder else 0, **params.unet}
    try:
        unet_config = UNetConfig.from_dict(unet_cfg)
        model = UNet3D(unet_config)
    except ValueError as exc:
        raise ConfigError(f"train.unet: {exc}") from None
    if unet_config.text_whitening and "text" in tensors:
        model.fit_text_whitening(tensors["text"])
    grid = space.grid(h, w)
    levels = len(unet_config.channel_mults) - 1
    if grid[0] % 2 ** levels or grid[1] % 2 ** levels:
        raise ConfigError(f"train.unet: the {params.space} grid {grid[0]}x{grid[1]} is not divisible by "
                          f"2**{levels} (one halving per extra channel_mults level); use fewer levels")
    diffusion = build_diffusion(params.diffusion)

    def loss_fn(m, batch, gen):
        def model_fn(x, tt):
            return m(x, tt, batch["first_frame"], batch.get("text"))

        out = diffusion.training_loss(model_fn, batch["x0"], generator=gen)
        return {"loss": out["loss"]}

    def sample_fn(ema_model, step: int, folder: Path) -> list[Path]:
        if not e_firsts:
            return []
        from dvdm.video import write_gif, write_mp4

        pipe = VideoPipeline(ema_model, space, diffusion, t, h, w, text_encoder, trainer.device)
        k = min(2, len(e_firsts))
        videos = pipe(np.stack(e_firsts[:k]), e_captions[:k], steps=params.sample_steps, guidance=params.guidance,
                      seeds=list(range(k)))
        # rows: clips; each frame shows ground truth | generated
        grid_v = np.concatenate([np.concatenate([e_frames[i], videos[i]], axis=2) for i in range(k)], axis=1)
        folder.mkdir(parents=True, exist_ok=True)
        gif, mp4 = folder / f"step_{step:06d}.gif", folder / f"step_{step:06d}.mp4"
        write_gif(gif, grid_v, fps=8)
        write_mp4(mp4, grid_v, fps=8)
        if check_frames:
            accuracy = motion_check(pipe, check_frames, params)
            with open(out_dir / "metrics.jsonl", "a") as fh:  # beside the loss curve: DVC plots + MLflow
                fh.write(json.dumps({"step": step, "check_direction_accuracy": accuracy}) + "\n")
            print(f"step {step}: prompt-swap check, direction accuracy {accuracy:.0%} "
                  f"({len(check_frames)} held-out first frames x 8 directions)", file=sys.stderr, flush=True)
        return [gif, mp4]

    cfg = TrainConfig.from_params(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resume:
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    checkpoint_config = {
        "space": space.state(), "unet": as_dict(unet_config), "diffusion": diffusion.config(),
        "clip": {"frames": t, "height": h, "width": w},
        "text": ({"model": "sentence-transformers/all-MiniLM-L6-v2", "dim": text_encoder.dim,
                  "sha256": getattr(text_encoder, "sha256", None)} if text_encoder else None),
        "autoencoder": ae_config, "params": as_dict(params),
    }
    trainer = Trainer(model, loss_fn, tensors, cfg, out_dir, kind="dvdm-diffusion",
                      checkpoint_config=checkpoint_config, sample_fn=sample_fn,
                      callbacks=[JsonlMetrics(out_dir / "metrics.jsonl", cfg.steps)], extra_weights=ae_weights)
    if resume and (out_dir / "checkpoint").exists():
        trainer.resume(out_dir / "checkpoint")
    started = time.perf_counter()
    path = trainer.fit()
    train_seconds = time.perf_counter() - started
    metrics = {"space": params.space, "steps": trainer.step, "train_clips": len(raws),
               "encode_seconds": round(encode_seconds, 2), "train_seconds": round(train_seconds, 2),
               "target_shape": list(space.target_shape(t, h, w)),
               "parameters": sum(p.numel() for p in model.parameters()),
               "val_loss": validation_loss(trainer.ema.model, diffusion, space, e_raws, e_firsts,
                                           tensors.get("text") is not None and text_encoder, e_captions,
                                           trainer.device)}
    write_json(out_dir / "metrics.json", metrics)
    metrics["checkpoint"] = str(path)
    return metrics


@torch.no_grad()
def validation_loss(model, diffusion: GaussianDiffusion, space: TargetSpace, raws, firsts, text_encoder, captions,
                    device) -> float | None:
    """Diffusion loss of held-out clips with fixed timesteps and noise, so runs are comparable."""
    if not raws:
        return None
    model.eval()
    x0 = torch.from_numpy(np.stack([space.normalize(r) for r in raws])).to(device)
    image = image_to_tensor(np.stack(firsts), device)
    text = text_encoder.encode(captions).to(device) if text_encoder else None
    gen = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(4):
        out = diffusion.training_loss(lambda x, tt: model(x, tt, image, text), x0, generator=gen)
        losses.append(float(out["loss"]))
    return float(np.mean(losses))
