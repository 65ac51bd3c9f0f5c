"""Stage `train-diffusion`: the denoiser for one target space (rgb = VDM, diff = D-VDM, mvres = ED-VDM).

Targets are encoded once (ED-VDM runs the codec with the trained autoencoder in the loop), normalised
with statistics measured on the training clips (saved with the model), and the denoiser learns them
conditioned on the first frame and, when the data has captions, on the frozen MiniLM sentence embedding
(dropped with `cond_drop_prob` for classifier-free guidance).
"""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dvdm.config import TrainParams, as_dict
from dvdm.data.shards import ShardedDataset
from dvdm.diffusion import GaussianDiffusion
from dvdm.diffusion.noise import rand
from dvdm.errors import ConfigError, DataError
from dvdm.models import UNet3D, UNetConfig
from dvdm.pipeline import VideoPipeline, image_to_tensor
from dvdm.spaces import TargetSpace, build_space, space_class
from dvdm.stages.curves import write_curve
from dvdm.stages.metrics_file import RESULTS_FILE, write_metrics
from dvdm.train.device import select_device
from dvdm.train.distributed import distributed_context
from dvdm.train.shared_data import RowSpec, TrainingArrays, training_arrays
from dvdm.train.trainer import JsonlMetrics, LossFn, TrainConfig, Trainer
from dvdm.utils.atomic import write_json
from dvdm.utils.progress import announce


@dataclass
class EncodedSplit:
    """Clips of one split in the training space: raw (not yet normalised) targets, first frames, captions,
    and the original frames (the ground truth shown beside progress samples)."""

    raws: list[np.ndarray]
    firsts: list[np.ndarray]
    captions: list[str]
    frames: list[np.ndarray]


def encode_split(data: ShardedDataset, split: str, space: TargetSpace, limit: int = 0) -> EncodedSplit:
    """Raw targets, first frames and captions of a split (at most `limit` clips when > 0)."""
    encoded = EncodedSplit([], [], [], [])
    for record, arrays in data.iter_examples(split):
        frames = arrays["frames"]
        encoded.raws.append(space.encode(frames))
        encoded.firsts.append(frames[0])
        encoded.captions.append(record["caption"])
        encoded.frames.append(frames)
        if limit and len(encoded.raws) >= limit:
            break
    return encoded


@dataclass
class TrainingClips:
    """What the stage knows of its clips besides the training arrays (which stay on disk)."""

    clip: tuple[int, int, int]          # frames, height, width (the first clip's; every clip has it)
    captions: list[str]                 # of the training clips, in the order of their rows (one per clip)
    held_out: EncodedSplit              # up to 4 val (else test) clips: progress samples and the validation loss
    use_text: bool                      # train.text is on and the training clips carry captions
    check_frames: list                  # first frames of the periodic prompt-swap check (empty: no check)
    encode_seconds: float


def open_ingested(ingested_dir: str | Path) -> ShardedDataset:
    data = ShardedDataset(Path(ingested_dir))
    if not data.records:
        raise DataError(f"{ingested_dir}: no clips")
    return data


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


def training_records(params: TrainParams, data: ShardedDataset, ingested_dir: str | Path) -> list[dict[str, Any]]:
    """The training clips' records in row order (at most `train.max_clips`)."""
    records = data.ordered_records("train")[:params.max_clips or None]
    if not records:
        raise DataError(f"{ingested_dir}: no clips in the train split")
    return records


def training_specs(space: TargetSpace, clip: tuple[int, int, int]) -> dict[str, RowSpec]:
    """The rows of the training arrays: the normalised target and the first frame as stored (uint8 H x W x 3;
    the loss scales it on the device)."""
    _, height, width = clip
    return {"x0": RowSpec(space.target_shape(*clip), "float32"), "first_frame": RowSpec((height, width, 3), "uint8")}


def encode_training_set(store: TrainingArrays, data: ShardedDataset, space: TargetSpace) -> None:
    """Encode this process's training clips into their rows (raw target, first frame), one clip at a time; then
    fit the space's normaliser on every row (rank 0, for all processes) and normalise this process's rows."""
    mine = store.mine
    examples = data.iter_examples("train", mine.start, mine.stop, keys=("frames",))
    for row, (record, arrays) in enumerate(examples, mine.start):
        frames = arrays["frames"]
        try:
            store.write("x0", row, space.encode(frames))
        except ValueError as exc:
            raise DataError(f"clip {record['id']}: {exc} (every training clip must have the first one's size)") \
                from None
        store.write("first_frame", row, frames[0])
    store.sync()
    context = store.context
    space.normalizer = context.broadcast(space.fit_normalizer(store.read("x0")) if context.is_main else None)
    x0 = store.writable("x0")
    for start in range(mine.start, mine.stop, 256):  # in place, a slab at a time
        stop = min(start + 256, mine.stop)
        x0[start:stop] = space.normalize(np.asarray(x0[start:stop]))
    store.sync()


def describe_clips(params: TrainParams, data: ShardedDataset, space: TargetSpace, clip: tuple[int, int, int],
                   records: list[dict[str, Any]], use_text: bool, encode_seconds: float) -> TrainingClips:
    """The held-out clips (encoded) and the prompt-swap check's first frames, beside the training rows."""
    eval_split = "val" if data.splits()["val"] else "test"
    started = time.perf_counter()
    held_out = encode_split(data, eval_split, space, 4)
    check_frames = prompt_swap_check_frames(data, eval_split, params.check_clips) \
        if use_text and params.check_clips else []
    return TrainingClips(clip, [r.get("caption", "") for r in records], held_out, use_text, check_frames,
                         encode_seconds + time.perf_counter() - started)


def prompt_swap_check_frames(data: ShardedDataset, split: str, limit: int) -> list:
    """First frames for the periodic prompt-swap check: held-out clips that carry synthetic motion labels."""
    from dvdm.evaluate.prompt_swap import held_out_first_frames

    pairs = [(r, a["frames"]) for (r, a), _ in zip(data.iter_examples(split), range(limit))]
    return held_out_first_frames([r for r, _ in pairs], [c for _, c in pairs], limit)


def load_text_encoder():
    """The frozen MiniLM sentence encoder (imported only when training with captions)."""
    from dvdm.models import TextEncoder

    return TextEncoder()


def write_text_embeddings(store: TrainingArrays, text_encoder, captions: list[str], chunk: int = 4096) -> None:
    """The frozen sentence embedding of every training caption into the `text` rows, written by the first
    process of each machine (every machine has its own copy of the arrays; one pass over the captions, as a
    single process makes it, so the embeddings do not depend on the number of processes)."""
    if store.context.local_rank == 0:
        rows = store.writable("text")
        for start in range(0, len(captions), chunk):
            rows[start:start + chunk] = text_encoder.encode(captions[start:start + chunk]).float().cpu().numpy()
    store.sync()


def build_denoiser(params: TrainParams, space: TargetSpace, clip: tuple[int, int, int], text_encoder,
                   text: torch.Tensor | None) -> tuple[UNet3D, UNetConfig]:
    """The UNet of `train.unet` for the space's channels, its text whitening fitted on the training captions;
    fails early when the space's grid cannot be halved at every level."""
    unet_cfg = {"in_channels": space.channels, "out_channels": space.channels,
                "text_dim": text_encoder.dim if text_encoder else 0, **params.unet}
    try:
        unet_config = UNetConfig.from_dict(unet_cfg)
        model = UNet3D(unet_config)
    except ValueError as exc:
        raise ConfigError(f"train.unet: {exc}") from None
    if unet_config.text_whitening and text is not None:
        model.fit_text_whitening(text)
    _, h, w = clip
    grid = space.grid(h, w)
    levels = len(unet_config.channel_mults) - 1
    if grid[0] % 2 ** levels or grid[1] % 2 ** levels:
        raise ConfigError(f"train.unet: the {params.space} grid {grid[0]}x{grid[1]} is not divisible by "
                          f"2**{levels} (one halving per extra channel_mults level); use fewer levels")
    return model, unet_config


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


def diffusion_loss(diffusion: GaussianDiffusion) -> LossFn:
    """The trainer's loss: the diffusion loss of a batch, conditioned on its first frames (and text)."""
    def loss_fn(m, batch, gen):
        text = batch.get("text")
        drop = None
        if text is not None and m.config.cond_drop_prob > 0:
            # classifier-free guidance's text dropout, drawn from the trainer's generator (not torch's global
            # one), so it is the same draw for a sample whatever the number of training processes
            drop = rand(len(text), gen, text.device) < m.config.cond_drop_prob

        image = image_to_tensor(batch["first_frame"], batch["x0"].device)  # stored as uint8 H x W x 3

        def model_fn(x, tt):
            return m(x, tt, image, text, drop_text=drop)

        out = diffusion.training_loss(model_fn, batch["x0"], generator=gen)
        return {"loss": out["loss"]}

    return loss_fn


@dataclass
class ProgressSamples:
    """The trainer's sample callback: ground truth | generated for two held-out clips (GIF + MP4) and, when
    there are check frames, the prompt-swap direction accuracy, logged beside the loss curve."""

    params: TrainParams
    space: TargetSpace
    diffusion: GaussianDiffusion
    clips: TrainingClips
    text_encoder: Any
    metrics_path: Path

    def __call__(self, ema_model: torch.nn.Module, step: int, folder: Path) -> list[Path]:
        if not self.clips.held_out.firsts:
            return []
        # sample on the device the trainer moved the EMA model to: the callback is built before the trainer
        device = next(ema_model.parameters()).device
        pipe = VideoPipeline(ema_model, self.space, self.diffusion, *self.clips.clip, self.text_encoder, device)
        paths = self.write_grid(pipe, step, folder)
        if self.clips.check_frames:
            self.prompt_swap_check(pipe, step)
        return paths

    def write_grid(self, pipe: VideoPipeline, step: int, folder: Path) -> list[Path]:
        from dvdm.video import write_gif, write_mp4

        held_out, params = self.clips.held_out, self.params
        k = min(2, len(held_out.firsts))
        videos = pipe(np.stack(held_out.firsts[:k]), held_out.captions[:k], steps=params.sample_steps,
                      guidance=params.guidance, seeds=list(range(k)))
        # rows: clips; each frame shows ground truth | generated
        grid_v = np.concatenate([np.concatenate([held_out.frames[i], videos[i]], axis=2) for i in range(k)], axis=1)
        folder.mkdir(parents=True, exist_ok=True)
        gif, mp4 = folder / f"step_{step:06d}.gif", folder / f"step_{step:06d}.mp4"
        write_gif(gif, grid_v, fps=8)
        write_mp4(mp4, grid_v, fps=8)
        return [gif, mp4]

    def prompt_swap_check(self, pipe: VideoPipeline, step: int) -> None:
        check_frames = self.clips.check_frames
        accuracy = motion_check(pipe, check_frames, self.params)
        with open(self.metrics_path, "a") as fh:  # beside the loss curve: DVC plots + MLflow
            fh.write(json.dumps({"step": step, "check_direction_accuracy": accuracy}) + "\n")
        announce(f"step {step}: prompt-swap check, direction accuracy {accuracy:.0%} "
                 f"({len(check_frames)} held-out first frames x 8 directions)")


def motion_check(pipe: VideoPipeline, frames: list, params: TrainParams) -> float:
    """Direction accuracy of a quick prompt swap (8 directions at the middle speed) on a few first frames."""
    from dvdm.evaluate.prompt_swap import run_prompt_swap

    res = run_prompt_swap(lambda im, pr, se: pipe(im, pr, steps=params.sample_steps, guidance=params.guidance,
                                                  seeds=se), frames, batch_size=8 * len(frames), speeds=[1],
                          label="train diffusion: prompt-swap check")
    return res["direction_accuracy"]


def checkpoint_config(params: TrainParams, space: TargetSpace, unet_config: UNetConfig,
                      diffusion: GaussianDiffusion, clip: tuple[int, int, int], text_encoder,
                      ae_config: dict[str, Any] | None) -> dict[str, Any]:
    """What every checkpoint's config.json records to rebuild the pipeline (`VideoPipeline.from_checkpoint`)."""
    t, h, w = clip
    return {
        "space": space.state(), "unet": as_dict(unet_config), "diffusion": diffusion.config(),
        "clip": {"frames": t, "height": h, "width": w},
        "text": ({"model": "sentence-transformers/all-MiniLM-L6-v2", "dim": text_encoder.dim,
                  "sha256": getattr(text_encoder, "sha256", None)} if text_encoder else None),
        "autoencoder": ae_config, "params": as_dict(params),
    }


def run_train_diffusion(params: TrainParams, ingested_dir: str | Path, out_dir: str | Path,
                        autoencoder_dir: str | Path | None = None, resume: bool = False,
                        fingerprint: str | None = None) -> dict[str, Any]:
    out_dir = Path(out_dir)
    diffusion = build_diffusion(params.diffusion)  # settings errors first, before any data is read
    if not 1 <= params.sample_steps <= diffusion.num_timesteps:
        raise ConfigError(f"train.sample_steps must be between 1 and train.diffusion.num_timesteps "
                          f"({diffusion.num_timesteps}), got {params.sample_steps}")
    data = open_ingested(ingested_dir)
    torch.manual_seed(params.seed)  # before anything is built: the autoencoder, text encoder and UNet draw from it
    space, ae_config, ae_weights = build_training_space(params, autoencoder_dir)
    records = training_records(params, data, ingested_dir)
    use_text = bool(params.text and any(r.get("caption", "").strip() for r in records))
    text_encoder = load_text_encoder() if use_text else None
    first = data.records[0]
    clip = (first["frames"], first["height"], first["width"])  # every clip has the first one's size
    specs = training_specs(space, clip)
    if text_encoder is not None:
        specs["text"] = RowSpec((text_encoder.dim,), "float32")

    cfg = TrainConfig.from_params(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    context = distributed_context(select_device(cfg.device))
    if not resume and context.is_main:
        metrics_path.unlink(missing_ok=True)
    with training_arrays(specs, len(records), context) as store:
        started = time.perf_counter()
        encode_training_set(store, data, space)
        clips = describe_clips(params, data, space, clip, records, use_text, time.perf_counter() - started)
        if text_encoder is not None:
            write_text_embeddings(store, text_encoder, clips.captions)
        data_arrays = store.arrays()
        text = torch.from_numpy(np.array(data_arrays["text"])) if text_encoder is not None else None
        model, unet_config = build_denoiser(params, space, clips.clip, text_encoder, text)
        trainer = Trainer(model, diffusion_loss(diffusion), data_arrays, cfg, out_dir, kind="dvdm-diffusion",
                          checkpoint_config=checkpoint_config(params, space, unet_config, diffusion, clips.clip,
                                                              text_encoder, ae_config),
                          sample_fn=ProgressSamples(params, space, diffusion, clips, text_encoder, metrics_path),
                          callbacks=[JsonlMetrics(metrics_path, cfg.steps)], extra_weights=ae_weights,
                          fingerprint=fingerprint)
        path = trainer.fit(resume=resume)
    train_seconds = trainer.train_seconds

    metrics = None
    if context.is_main:  # rank 0 evaluates and writes; every rank returns its summary
        metrics = training_metrics(params, trainer, space, diffusion, clips, text_encoder, train_seconds)
        write_json(out_dir / RESULTS_FILE, metrics)
        write_curve(out_dir)
        write_metrics(out_dir / "metrics.json", {"loss": metrics["val_loss"]})
        metrics["checkpoint"] = str(path)
    return context.broadcast(metrics)


def training_metrics(params: TrainParams, trainer: Trainer, space: TargetSpace, diffusion: GaussianDiffusion,
                     clips: TrainingClips, text_encoder, train_seconds: float) -> dict[str, Any]:
    """results.json: sizes, timings and the EMA model's loss on the held-out clips."""
    held_out = clips.held_out
    return {"space": params.space, "steps": trainer.step, "train_clips": len(clips.captions),
            "encode_seconds": round(clips.encode_seconds, 2), "train_seconds": round(train_seconds, 2),
            "target_shape": list(space.target_shape(*clips.clip)),
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "val_loss": validation_loss(trainer.ema.model, diffusion, space, held_out.raws, held_out.firsts,
                                        text_encoder, held_out.captions, trainer.device)}


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
