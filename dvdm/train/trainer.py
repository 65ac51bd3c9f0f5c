"""One training loop for every model in dvdm (residual autoencoder, diffusion denoiser).

What it owns: batching with its own seeded generator (from tensors in memory or arrays memory-mapped from
disk, which are read a batch at a time), the optimizer, gradient clipping, AMP on CUDA, EMA, a NaN guard,
periodic samples, complete checkpoints and bit-identical resume on CPU (model, EMA, optimizer, step, and
every RNG the loop draws from are restored), and data-parallel training under `torchrun`
(`dvdm.train.distributed`: each rank trains on its slice of every global batch, gradients averaged by
DistributedDataParallel, rank 0 alone saves, samples and logs). What it does not own: the loss (a callable),
the data preparation, and where metrics go (callbacks; `JsonlMetrics` writes the metrics.jsonl the pipeline
replays into MLflow).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dvdm.diffusion.noise import BatchShard
from dvdm.errors import DvdmError
from dvdm.runtime import cpus
from dvdm.train.checkpoint import FINGERPRINT_KEY, load_checkpoint, save_checkpoint
from dvdm.train.device import amp_dtype, autocast, select_device
from dvdm.train.distributed import distributed_context, process_device
from dvdm.train.ema import EMA
from dvdm.train.thread_governor import ThreadGovernor
from dvdm.utils.atomic import write_text
from dvdm.utils.progress import Progress, announce

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, dict[str, torch.Tensor], torch.Generator | BatchShard], dict[str, torch.Tensor]]
# a training set: equal-length tensors, or numpy arrays (np.load(..., mmap_mode="r") streams them from disk)
TrainingData = Mapping[str, "torch.Tensor | np.ndarray"]
SampleFn = Callable[[nn.Module, int, Path], list[Path]]


class TrainingDiverged(DvdmError):
    """The loss stayed non-finite for too many consecutive steps."""


class _LossModule(nn.Module):
    """The model and its loss as one module, so DistributedDataParallel sees every loss (a forward pass or
    not, e.g. the autoencoder's `loss` method) as its forward and averages the gradients of all of them."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[], LossFn]) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss_fn  # looked up per call: the trainer's loss may be replaced

    def forward(self, batch: dict[str, torch.Tensor], generator) -> dict[str, torch.Tensor]:
        return self.loss_fn()(self.model, batch, generator)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    log_every: int = 25
    sample_every: int = 0          # 0: only at the end
    checkpoint_every: int = 0      # 0: only at the end
    max_nan_steps: int = 10
    device: str = "auto"
    amp: bool = True
    max_seconds: float = 0.0       # > 0: also stop after this much training time (a compute budget)
    warmup_steps: int = 0          # linear warm-up from 0 to lr
    lr_schedule: str = "constant"  # constant | cosine (decays to min_lr_ratio * lr at `steps`)
    min_lr_ratio: float = 0.1
    adaptive_threads: bool = True  # on CPU, pick the thread count by measured step time (thread_governor.py)

    def __post_init__(self) -> None:
        from dvdm.errors import ConfigError

        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if self.warmup_steps < 0 or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"warmup_steps must be >= 0 and min_lr_ratio within [0, 1], got "
                              f"{self.warmup_steps} and {self.min_lr_ratio}")
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    @classmethod
    def from_params(cls, params: Any) -> TrainConfig:
        """The trainer settings of a stage's params dataclass: every field of the same name (the rest keep
        the trainer's defaults), so a new trainer setting needs no hand-written mapping per stage."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dataclasses.asdict(params).items() if k in names})


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warm-up, then constant or cosine decay.
    A pure function of the step, so a resumed run continues on the same curve."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class Callback(Protocol):
    def on_train_step(self, step: int, metrics: dict[str, float] | None) -> None: ...  # every step (None: skipped)
    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...  # every log_every steps: the window's means
    def on_train_end(self, step: int) -> None: ...  # the loop is done (the final checkpoint and samples follow)
    def on_sample(self, step: int, paths: list[Path]) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def on_resume(self, step: int) -> None: ...  # training continues after `step` (from a checkpoint)


class JsonlMetrics:
    """Appends logged metrics to `metrics.jsonl` (DVC plots read it) and shows the training's progress: a bar on a
    terminal, else a line every 30 s, with step/total, loss, steps/s and ETA (`dvdm.utils.progress`)."""

    def __init__(self, path: Path, total: int, stream=None, label: str | None = None):
        self.path, self.total, self.stream = path, total, stream
        self.label = label or f"train {Path(path).parent.name}"
        self.progress: Progress | None = None

    def on_train_step(self, step: int, metrics: dict[str, float] | None) -> None:
        if self.progress is None or self.progress.closed:  # opened at the first step: a resumed run starts there
            self.progress = Progress(self.label, self.total, "step", start=step, stream=self.stream)
        self.progress.update(step, loss=(metrics or {}).get("loss"))

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")

    def on_train_end(self, step: int) -> None:
        if self.progress is not None:
            self.progress.close()

    def _note(self, text: str) -> None:
        if self.progress is not None and not self.progress.closed:
            self.progress.note(text)
        else:
            announce(f"{self.label}: {text}", self.stream)

    def on_sample(self, step: int, paths: list[Path]) -> None:
        self._note(f"step {step}: samples {', '.join(str(p) for p in paths)}")

    def on_checkpoint(self, step: int, path: Path) -> None:
        self._note(f"step {step}: checkpoint {path}")

    def on_resume(self, step: int) -> None:
        """Drop what the interrupted run logged after its checkpoint: those steps are trained (and logged) again."""
        if not self.path.is_file():
            return
        lines = self.path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            write_text(self.path, "".join(kept))


@dataclass
class Trainer:
    """Train `model` on `data` (tensors or numpy arrays, memory-mapped ones included, with a common first
    dimension) with `loss_fn`. `config.batch_size` is the global batch: under torchrun each rank trains on
    batch_size / world_size rows of it.

    `kind` and `checkpoint_config` go into every checkpoint's config.json (how to rebuild the model);
    `extra_weights` are saved beside the model (e.g. the autoencoder inside an ED-VDM checkpoint);
    `fingerprint` (settings + inputs, `run_fingerprint`) goes into every checkpoint, so a rerun knows whether
    it may resume from it.
    """

    model: nn.Module
    loss_fn: LossFn
    data: TrainingData
    config: TrainConfig
    out_dir: Path
    kind: str
    checkpoint_config: dict[str, Any] = field(default_factory=dict)
    sample_fn: SampleFn | None = None
    callbacks: list[Callback] = field(default_factory=list)
    extra_weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        device = select_device(self.config.device)
        self.dist = distributed_context(device)
        self.device = process_device(device, self.dist)
        self.shard = self.dist.shard(self.config.batch_size)
        if not self.dist.is_main:
            self.callbacks, self.sample_fn = [], None  # rank 0 alone logs and samples
        self.model.to(self.device)
        loss_module = _LossModule(self.model, lambda: self.loss_fn)
        self.forward = (DistributedDataParallel(
            loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.enabled else loss_module)
        self.n = len(next(iter(self.data.values())))
        if self.n == 0:
            raise DvdmError("no training examples")
        if any(len(v) != self.n for v in self.data.values()):
            raise ValueError("all data tensors must have the same first dimension")
        decay = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(decay, lr=self.config.lr, betas=self.config.betas,
                                           weight_decay=self.config.weight_decay)
        self.amp = amp_dtype(self.device, self.config.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.ema = EMA(self.model, self.config.ema_decay)
        self.step = 0
        self.nan_steps = 0
        self.data_gen = torch.Generator().manual_seed(self.config.seed)
        self.noise_gen = torch.Generator().manual_seed(self.config.seed + 1)
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0
        self.governor = (ThreadGovernor(torch.get_num_threads())
                         if self.config.adaptive_threads and self.device.type == "cpu" and not self.dist.enabled
                         and cpus.threads_adjustable() else None)

    # -- data -----------------------------------------------------------------------------------------
    def _next_batch(self) -> dict[str, torch.Tensor]:
        idx: list[torch.Tensor] = []
        have = 0
        while have < self.config.batch_size:  # a batch may span the end of one epoch and the next
            if self._pos >= len(self._order):
                self._order = torch.randperm(self.n, generator=self.data_gen)
                self._pos = 0
            take = min(self.config.batch_size - have, len(self._order) - self._pos)
            idx.append(self._order[self._pos:self._pos + take])
            self._pos += take
            have += take
        index = torch.cat(idx) if len(idx) > 1 else idx[0]
        index = index[self.shard[0]:self.shard[1]]  # this rank's rows of the global batch
        return {k: _rows(v, index).to(self.device, non_blocking=True) for k, v in self.data.items()}

    def _generator(self) -> torch.Generator | BatchShard:
        """The loss's random draws: the whole global batch's, of which this rank keeps its rows."""
        if not self.dist.enabled:
            return self.noise_gen
        return BatchShard(self.noise_gen, *self.shard, self.config.batch_size)

    # -- state ----------------------------------------------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "ema_updates": self.ema.updates, "nan_steps": self.nan_steps,
                "data_gen": self.data_gen.get_state(), "noise_gen": self.noise_gen.get_state(),
                "torch_rng": torch.get_rng_state(), "order": self._order.clone(), "pos": self._pos,
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def save(self, path: Path | None = None) -> Path:
        """Rank 0 writes the checkpoint; the other ranks wait until it is complete."""
        path = path or self.out_dir / "checkpoint"
        if not self.dist.is_main:
            self.dist.barrier()
            return path
        save_checkpoint(path, kind=self.kind,
                        config={**self.checkpoint_config, "train": _jsonable(asdict(self.config)),
                                **({FINGERPRINT_KEY: self.fingerprint} if self.fingerprint else {})},
                        weights={"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                                 **self.extra_weights},
                        trainer_state=self.trainer_state(), step=self.step)
        for cb in self.callbacks:
            cb.on_checkpoint(self.step, path)
        self.dist.barrier()
        return path

    def resume(self, path: Path) -> None:
        """Continue exactly where the checkpoint at `path` stopped."""
        ckpt = load_checkpoint(path, kind=self.kind)
        state = ckpt.trainer_state()
        if state is None:
            raise DvdmError(f"{path}: checkpoint has no trainer state to resume from")
        self.model.load_state_dict(ckpt.weights("model", self.device))
        self.ema.load_state_dict(ckpt.weights("ema", self.device), state["ema_updates"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.nan_steps = state["step"], state["nan_steps"]
        self.data_gen.set_state(state["data_gen"])
        self.noise_gen.set_state(state["noise_gen"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self._order, self._pos = state["order"], state["pos"]
        for cb in self.callbacks:
            cb.on_resume(self.step)
        log.info("resumed from %s at step %d", path, self.step)

    # -- loop -----------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float] | None:
        self.model.train()
        batch = self._next_batch()
        with autocast(self.device, self.amp):
            out = self.forward(batch, self._generator())
        loss = out["loss"]
        if not self._all_finite(loss):
            self.nan_steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            if self.nan_steps >= self.config.max_nan_steps:
                raise TrainingDiverged(f"loss was not finite for {self.nan_steps} consecutive steps at step "
                                       f"{self.step}; lower the learning rate or check the data")
            log.warning("non-finite loss at step %d: step skipped", self.step)
            return None
        self.nan_steps = 0
        lr = learning_rate(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
                     if self.config.grad_clip > 0 else torch.tensor(0.0))
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            log.warning("non-finite gradient at step %d: step skipped", self.step)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model)
        return ({k: float(v.detach()) for k, v in out.items() if v.ndim == 0}
                | {"grad_norm": float(grad_norm), "lr": lr})

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank: all ranks skip a step together (a rank that skipped
        the backward pass alone would leave the others waiting in the gradient all-reduce)."""
        finite = torch.isfinite(loss.detach()).to(torch.float32)
        if self.dist.enabled:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite)

    def _out_of_time(self, started: float) -> bool:
        """The compute budget, decided by rank 0 for every rank (their clocks differ)."""
        if not self.config.max_seconds:
            return False
        return bool(self.dist.broadcast(time.perf_counter() - started >= self.config.max_seconds))

    def _report(self, running: dict[str, float], count: int, started: float) -> None:
        avg = self.dist.all_mean({k: v / count for k, v in running.items()})
        avg["steps_per_second"] = self.step / max(time.perf_counter() - started, 1e-9)
        if self.governor and self.governor.active:
            avg["cpu_threads"] = float(self.governor.threads)
        for cb in self.callbacks:
            cb.on_step(self.step, avg)

    def fit(self, resume: bool = False) -> Path:
        """Train to `config.steps` (or until `config.max_seconds` ran out); returns the final checkpoint path.
        `resume`: continue from OUT/checkpoint when there is one. `train_seconds` is set afterwards."""
        if resume and (self.out_dir / "checkpoint").exists():
            self.resume(self.out_dir / "checkpoint")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.config
        running: dict[str, float] = {}
        count = 0
        started = time.perf_counter()
        while self.step < cfg.steps:
            if self._out_of_time(started):
                break
            if self.governor:
                self.governor.before_step(self.step)
            metrics = self.train_step()
            if self.governor:
                self.governor.after_step(self.step)
            self.step += 1
            for cb in self.callbacks:
                cb.on_train_step(self.step, metrics)
            if metrics is not None:
                for k, v in metrics.items():
                    running[k] = running.get(k, 0.0) + v
                count += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                if count:
                    self._report(running, count, started)
                running, count = {}, 0
            if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step != cfg.steps:
                self._sample()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step != cfg.steps:
                self.save()
        if count:  # a budget stop between two log points: report the partial window too
            self._report(running, count, started)
        for cb in self.callbacks:
            cb.on_train_end(self.step)
        path = self.save()
        self.train_seconds = time.perf_counter() - started
        self._sample()
        return path

    def _sample(self) -> None:
        if self.sample_fn is None:
            return
        paths = self.sample_fn(self.ema.model, self.step, self.out_dir / "samples")
        for cb in self.callbacks:
            cb.on_sample(self.step, paths)


def _rows(values: torch.Tensor | np.ndarray, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of a tensor, or of a numpy array (a memory-mapped one reads just these rows from disk)."""
    if isinstance(values, torch.Tensor):
        return values[index]
    return torch.from_numpy(np.ascontiguousarray(values[index.numpy()]))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj
