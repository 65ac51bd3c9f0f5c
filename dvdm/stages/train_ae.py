"""Stage `train-ae`: the residual autoencoder of ED-VDM, trained on the decomposed residuals.

Reports the residual PSNR (peak 255 on the pixel-unit residual error) and the full-clip reconstruction
quality of the codec with the trained autoencoder *in the loop* (closed loop: MV + decoded residual,
PSNR/SSIM over frames 1..T-1) on held-out clips: ED-VDM's upper bound (paper Tables 2 and 5). PSNR and SSIM
are `dvdm.metrics`' (the SSIM is the one evaluate reports); the PSNRs pool the MSE over all clips. The
residual PSNR is also the PSNR the decoded frames would have before rounding (the residual's error is the
frame's), our reading of the paper's Table 5.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dvdm.codec.decompose import DecomposeConfig, decompose
from dvdm.codec.residuals import reconstruct
from dvdm.config import TrainAEParams, as_dict
from dvdm.data.shards import ShardedDataset
from dvdm.errors import DataError
from dvdm.metrics.psnr import mse, psnr_of_mse
from dvdm.metrics.ssim import ssim_per_frame
from dvdm.models import AutoencoderConfig, ResidualAutoencoder
from dvdm.spaces import target_sizes
from dvdm.spaces.ae_codec import AutoencoderResidualCodec
from dvdm.stages.curves import write_curve
from dvdm.stages.metrics_file import RESULTS_FILE, write_metrics
from dvdm.train.device import select_device
from dvdm.train.distributed import distributed_context
from dvdm.train.shared_data import RowSpec, TrainingArrays, local_share, training_arrays
from dvdm.train.trainer import JsonlMetrics, TrainConfig, Trainer
from dvdm.utils.atomic import write_json


def load_residuals(decomposed: ShardedDataset, split: str, limit: int = 0) -> list[tuple]:
    """The (first_frame, mv, residual, record) of each clip of a split (at most `limit` when > 0)."""
    clips = []
    for record, arrays in decomposed.iter_examples(split, stop=limit or None):
        clips.append((arrays["first_frame"], arrays["mv"], arrays["residual"], record))
    return clips


def residual_rows(records: list[dict[str, Any]]) -> list[int]:
    """The first row of each clip's residual frames in the training array, and the total as the last item."""
    offsets = [0]
    for record in records:
        offsets.append(offsets[-1] + int(record["frames"]) - 1)
    return offsets


def write_residuals(store: TrainingArrays, data: ShardedDataset, records: list[dict[str, Any]],
                    offsets: list[int]) -> None:
    """This process's share of the training clips, each clip's residual frames into its rows (3, H, W) int16
    (`offsets`: `residual_rows(records)`)."""
    rows = store.writable("residual")
    clips = local_share(len(records), store.context)
    examples = data.iter_examples("train", clips.start, clips.stop, keys=("residual",))
    for k, (record, arrays) in enumerate(examples, clips.start):
        frames = arrays["residual"].transpose(0, 3, 1, 2)
        if frames.shape != (offsets[k + 1] - offsets[k], *rows.shape[1:]):
            raise DataError(f"clip {record['id']}: residual frames {frames.shape}, expected "
                            f"{(offsets[k + 1] - offsets[k], *rows.shape[1:])} (its record's frame count and the "
                            f"first clip's size)")
        rows[offsets[k]:offsets[k + 1]] = frames


SEARCH_SETTINGS = ("search", "strategy", "static_threshold", "match")  # what the ED-VDM space re-runs


def search_settings(codec: dict[str, Any] | None, block: int) -> dict[str, Any]:
    """The motion-search settings in a codec record (decompose's stats.json, a train-ae checkpoint), with
    the values of records written before a setting existed (search = block, luma matching)."""
    settings = {"search": block, "strategy": "fast", "static_threshold": 0.0, "match": "luma"}
    settings.update({k: v for k, v in (codec or {}).items() if k in SEARCH_SETTINGS})
    return settings


def evaluate_roundtrip(roundtrip, clips, block: int, search: int | dict[str, Any]) -> dict[str, float]:
    """Residual PSNR and clip reconstruction of a lossy residual code on held-out clips.

    `roundtrip(residuals (N, H, W, 3) float32) -> reconstructed residuals` is the code under test (the
    autoencoder, a linear baseline, or zeros = motion vectors alone). The clip is re-encoded with the code
    *in the loop* (closed loop, as the ED-VDM space encodes), and also decoded open loop for comparison.
    `search`: the search range, or every `SEARCH_SETTINGS` value.
    """
    settings = search if isinstance(search, dict) else {"search": search}
    # PSNRs come from the MSE pooled over all clips: a per-clip mean turns infinite as soon as one clip is
    # reconstructed exactly (common for synthetic clips with integer motion).
    res_err, rec_err, open_err, rec_ssim = [], [], [], []
    for first, mv, residual, _ in clips:
        frames = reconstruct(first, mv, residual, block)            # the original clip, exactly
        r_hat = roundtrip(residual.astype(np.float32))
        res_err.append(mse(residual, r_hat))
        open_err.append(mse(frames[1:], reconstruct(first, mv, r_hat, block)[1:]))
        d = decompose(frames, DecomposeConfig(block=block, **settings),
                      roundtrip=lambda r: roundtrip(r[None].astype(np.float32))[0])
        recon = reconstruct(d.first_frame, d.mv, roundtrip(d.residual.astype(np.float32)), block)
        rec_err.append(mse(frames[1:], recon[1:]))
        rec_ssim.append(float(ssim_per_frame(frames[1:], recon[1:]).mean()))
    return {"residual_psnr": psnr_of_mse(np.mean(res_err)), "reconstruction_psnr": psnr_of_mse(np.mean(rec_err)),
            "reconstruction_ssim": float(np.mean(rec_ssim)),
            "open_loop_reconstruction_psnr": psnr_of_mse(np.mean(open_err)), "eval_clips": len(clips)}


def evaluate_codec(model: ResidualAutoencoder, clips, block: int, search: dict[str, Any],
                   device) -> dict[str, float]:
    """`evaluate_roundtrip` with the residual autoencoder as the code (ED-VDM's upper bound)."""
    codec = AutoencoderResidualCodec(model, device)
    if not clips:
        return {"eval_clips": 0}
    size = clips[0][0].shape[:2]
    return evaluate_roundtrip(lambda r: codec.decode(codec.encode(r), size), clips, block, search)


def run_train_ae(params: TrainAEParams, decomposed_dir: str | Path, out_dir: str | Path,
                 resume: bool = False, fingerprint: str | None = None) -> dict[str, Any]:
    out_dir = Path(out_dir)
    data = ShardedDataset(Path(decomposed_dir))
    if not data.records:
        raise DataError(f"{decomposed_dir}: no decomposed clips")
    block = int(data.records[0]["block"])
    records = data.ordered_records("train")
    if not records:
        raise DataError(f"{decomposed_dir}: no clips in the train split")
    split = "val" if data.splits()["val"] else "test"
    eval_clips = load_residuals(data, split, params.eval_clips)
    stats_file = Path(decomposed_dir) / "stats.json"
    codec: dict[str, Any] = {}
    if stats_file.is_file():
        import json

        codec = json.loads(stats_file.read_text())["codec"]
    search = search_settings(codec, block)

    ae_kwargs: dict[str, Any] = {"block": block, "latent_channels": params.latent_channels,
                                 "base_channels": params.base_channels, "kl": params.kl,
                                 "kl_weight": params.kl_weight, "ssim_weight": params.ssim_weight,
                                 "mse_weight": params.mse_weight}
    if params.residual_scale > 0:
        ae_kwargs["residual_scale"] = params.residual_scale
    ae_config = AutoencoderConfig(**ae_kwargs)
    torch.manual_seed(params.seed)
    model = ResidualAutoencoder(ae_config)

    def loss_fn(m, batch, _gen):
        out = m.loss(batch["residual"].float())
        return {"loss": out["total"], **{k: v for k, v in out.items() if k != "total"}}

    cfg = TrainConfig.from_params(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    context = distributed_context(select_device(cfg.device))
    if not resume and context.is_main:
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    first = data.records[0]
    spec = RowSpec((3, int(first["height"]), int(first["width"])), "int16")
    offsets = residual_rows(records)
    with training_arrays({"residual": spec}, offsets[-1], context) as store:
        write_residuals(store, data, records, offsets)
        data_arrays = store.arrays()
        trainer = Trainer(model, loss_fn, data_arrays, cfg, out_dir, kind="dvdm-autoencoder",
                          checkpoint_config={"autoencoder": as_dict(ae_config), "block": block,
                                             "search": search["search"], "codec": search,
                                             "params": as_dict(params)},
                          callbacks=[JsonlMetrics(out_dir / "metrics.jsonl", cfg.steps)],
                          fingerprint=fingerprint)
        path = trainer.fit(resume=resume)
    seconds = trainer.train_seconds
    if not context.is_main:  # rank 0 evaluates and writes; every rank returns its summary
        return context.broadcast(None)
    metrics = {"steps": trainer.step, "train_seconds": round(seconds, 2), "block": block,
               "latent_channels": params.latent_channels, "train_frames": len(data_arrays["residual"]),
               "eval_split": split,
               # what this latent makes of each space's diffusion target (ED-VDM: ~117x smaller at 128x128)
               "target": target_sizes(int(data.records[0]["frames"]), int(data.records[0]["height"]),
                                      int(data.records[0]["width"]),
                                      {"block": block, "latent_channels": params.latent_channels}),
               **evaluate_codec(trainer.ema.model, eval_clips, block, search, trainer.device)}
    write_json(out_dir / RESULTS_FILE, metrics)
    write_curve(out_dir)
    write_metrics(out_dir / "metrics.json", {"psnr": metrics.get("reconstruction_psnr"),
                                             "ssim": metrics.get("reconstruction_ssim")})
    metrics["checkpoint"] = str(path)
    return context.broadcast(metrics)


def load_autoencoder(path: str | Path, device: str | torch.device = "cpu") -> ResidualAutoencoder:
    """The EMA weights of a train-ae checkpoint (directory `checkpoint` or its parent)."""
    ckpt = _autoencoder_checkpoint(path)
    model = ResidualAutoencoder(AutoencoderConfig.from_dict(ckpt.config["autoencoder"]))
    model.load_state_dict(ckpt.weights("ema", device))
    return model.to(device).eval()


def autoencoder_search_settings(path: str | Path) -> dict[str, Any]:
    """The motion-search settings the autoencoder's residuals were made with (`SEARCH_SETTINGS`), which the
    ED-VDM space must use to encode the same residuals."""
    config = _autoencoder_checkpoint(path).config
    recorded = {"search": config["search"]} if config.get("search") else {}  # older checkpoints: search only
    return search_settings({**recorded, **config.get("codec", {})}, int(config["block"]))


def _autoencoder_checkpoint(path: str | Path):
    from dvdm.train.checkpoint import load_checkpoint

    p = Path(path)
    if (p / "checkpoint" / "config.json").is_file():
        p = p / "checkpoint"
    return load_checkpoint(p, kind="dvdm-autoencoder")
