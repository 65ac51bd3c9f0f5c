"""A small diffusion training job for tests/test_distributed_training.py, run as one process
(`python tests/ddp_job.py OUT STEPS`) or under `torchrun --nproc-per-node N` (same arguments).

It trains a tiny text-conditioned UNet with the pipeline's own diffusion loss (timesteps, noise and the
classifier-free-guidance text dropout all drawn by the trainer) and writes the final EMA and model weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dvdm.diffusion import GaussianDiffusion
from dvdm.models import UNet3D, UNetConfig
from dvdm.stages.train_diffusion import diffusion_loss
from dvdm.train.distributed import distributed_context, shutdown
from dvdm.train.shared_data import RowSpec, training_arrays
from dvdm.train.trainer import JsonlMetrics, TrainConfig, Trainer


def main(out: Path, steps: int, resume: bool) -> None:
    torch.manual_seed(0)
    n, frames, size = 12, 4, 16
    data = {"x0": torch.randn(n, 3, frames, size, size).numpy(), "text": torch.randn(n, 16).numpy(),
            "first_frame": torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8).numpy()}
    model = UNet3D(UNetConfig(in_channels=3, out_channels=3, base_channels=8, channel_mults=(1, 2),
                              spatial_attention=(False, False), attention_heads=1, attention_head_dim=8,
                              text_dim=16, cond_drop_prob=0.5))
    config = TrainConfig(steps=steps, batch_size=4, lr=1e-3, log_every=1, checkpoint_every=3, seed=0, ema_decay=0.9)
    context = distributed_context()
    specs = {key: RowSpec(values.shape[1:], values.dtype.str) for key, values in data.items()}
    with training_arrays(specs, n, context) as store:  # as the stages do: each process writes its rows
        for key, values in data.items():
            store.writable(key)[store.mine.start:store.mine.stop] = values[store.mine.start:store.mine.stop]
        arrays = store.arrays()
        trainer = Trainer(model, diffusion_loss(GaussianDiffusion.create(num_timesteps=50)), arrays, config, out,
                          kind="test-ddp", callbacks=[JsonlMetrics(out / "metrics.jsonl", steps)])
        if resume:
            trainer.resume(out / "checkpoint")
        trainer.fit()
    if context.is_main:
        torch.save({"model": model.state_dict(), "ema": trainer.ema.state_dict(), "step": trainer.step},
                   out / "final.pt")
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), "--resume" in sys.argv[3:])
