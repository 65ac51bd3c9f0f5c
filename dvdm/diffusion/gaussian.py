"""The Gaussian diffusion process: schedule tables, forward noising, x0/eps/v conversions, posterior, loss.

A plain object holding no weights and no network (improved-diffusion's `GaussianDiffusion`, diffusers'
scheduler `add_noise`): the denoiser is passed in as `model_fn(x_t, t) -> output` with conditioning already
bound. Samplers (samplers.py) use the conversions and the posterior defined here.

Notation (Ho et al. 2020): alpha_bar_t = prod_{s<=t} (1 - beta_s); x_t = sqrt(alpha_bar_t) x0 +
sqrt(1 - alpha_bar_t) eps; v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022).
Timesteps are 0-based: t = 0 is the least noisy step, t = T - 1 the noisiest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from dvdm.diffusion.noise import Generators, randint, randn
from dvdm.diffusion.schedules import make_betas
from dvdm.runtime.ddim import PREDICTIONS, Coefficients, split_prediction, velocity

LOSS_WEIGHTINGS = ("none", "min_snr")

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GaussianDiffusion:
    """Forward process and training loss for a fixed beta schedule.

    :param betas: (T,) noise variances, each in (0, 1).
    :param prediction: what the network outputs: "eps" (noise), "v" (velocity) or "x0" (clean target).
    :param loss_weighting: "none" (plain MSE on the prediction) or "min_snr" (Hang et al. 2023).
    :param min_snr_gamma: the SNR cap gamma of min-SNR weighting.
    :param schedule: name of the schedule that made `betas`, kept only so that `config()` stays short.
    """

    def __init__(
        self,
        betas: torch.Tensor | Sequence[float],
        prediction: str = "v",
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
        schedule: str | None = None,
    ) -> None:
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; known: {', '.join(PREDICTIONS)}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss_weighting {loss_weighting!r}; known: {', '.join(LOSS_WEIGHTINGS)}")
        if not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {min_snr_gamma!r}")
        self.prediction = prediction
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.schedule = schedule

        # All tables float64 on CPU; `_extract` picks entries and only then casts to the input's dtype/device.
        self.betas = betas
        alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # q(x_{t-1} | x_t, x0), DDPM eq. 6-7.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance is 0 at t = 0; its log is clipped to the t = 1 value so it stays finite.
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
            if len(betas) > 1
            else self.posterior_variance.clamp(min=1e-20)
        )
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * alphas.sqrt() / (1.0 - self.alphas_cumprod)

    # -- construction and serialisation ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        schedule: str = "cosine",
        num_timesteps: int = 1000,
        prediction: str = "v",
        loss_weighting: str = "none",
        min_snr_gamma: float = 5.0,
    ) -> GaussianDiffusion:
        """Build from a named schedule (see `schedules.SCHEDULES`). The defaults are the default preset's
        `train.diffusion` (checked by a test): v prediction is well-conditioned with the cosine schedule."""
        return cls(make_betas(schedule, num_timesteps), prediction, loss_weighting, min_snr_gamma, schedule)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings that `from_config` rebuilds this object from. Betas are listed only
        when they did not come from a named schedule."""
        cfg: dict[str, Any] = {
            "schedule": self.schedule,
            "num_timesteps": self.num_timesteps,
            "prediction": self.prediction,
            "loss_weighting": self.loss_weighting,
            "min_snr_gamma": self.min_snr_gamma,
        }
        if self.schedule is None:
            cfg["betas"] = self.betas.tolist()
        return cfg

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GaussianDiffusion:
        cfg = dict(cfg)
        known = {"schedule", "num_timesteps", "prediction", "loss_weighting", "min_snr_gamma", "betas"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            names = ", ".join(sorted(known))
            raise ValueError(f"unknown diffusion setting(s) {', '.join(unknown)}; known: {names}")
        kwargs = {k: cfg[k] for k in ("prediction", "loss_weighting", "min_snr_gamma") if k in cfg}
        if cfg.get("betas") is not None:
            betas = cfg["betas"]
            if "num_timesteps" in cfg and cfg["num_timesteps"] != len(betas):
                raise ValueError(f"num_timesteps={cfg['num_timesteps']} but {len(betas)} betas given")
            return cls(betas, schedule=cfg.get("schedule"), **kwargs)
        if cfg.get("schedule") is None:
            raise ValueError("diffusion config needs a 'schedule' name or explicit 'betas'")
        return cls.create(cfg["schedule"], cfg.get("num_timesteps", 1000), **kwargs)

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    def __repr__(self) -> str:
        return (
            f"GaussianDiffusion(schedule={self.schedule!r}, num_timesteps={self.num_timesteps}, "
            f"prediction={self.prediction!r}, loss_weighting={self.loss_weighting!r}, "
            f"min_snr_gamma={self.min_snr_gamma})"
        )

    # -- table lookup ------------------------------------------------------------------------------------

    def _extract(self, table: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """table[t] in like's dtype/device, shaped (B, 1, ..., 1) to broadcast over a (B, ...) tensor."""
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"timesteps must be integers, got dtype {t.dtype}")
        values = table[t.detach().long().cpu()]
        dtype = like.dtype if like.dtype.is_floating_point else torch.get_default_dtype()
        values = values.to(device=like.device, dtype=dtype)
        if values.ndim == 1:
            values = values.reshape(-1, *([1] * (like.ndim - 1)))
        return values

    # -- forward process ---------------------------------------------------------------------------------

    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_t | x0); the variance is broadcastable to x0's shape."""
        mean = self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
        return mean, 1.0 - self._extract(self.alphas_cumprod, t, x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t ~ q(x_t | x0) using the given standard-normal `noise` (drawn here when None)."""
        if noise is None:
            noise = torch.randn_like(x0)
        return self._extract(self.sqrt_alphas_cumprod, t, x0) * x0 + (
            self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t), float32 on t's device."""
        t = torch.as_tensor(t)
        snr = self.alphas_cumprod / (1.0 - self.alphas_cumprod)
        return snr[t.long().cpu()].to(device=t.device, dtype=torch.float32)

    # -- conversions between x0, eps and v (the runtime core's arithmetic, on torch tensors) -------------

    def coefficients(self, t: torch.Tensor | int, like: torch.Tensor) -> Coefficients:
        """The schedule at timesteps t, in like's dtype/device, shaped to broadcast over like."""
        return Coefficients(*(self._extract(table, t, like) for table in (
            self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod, self.sqrt_recip_alphas_cumprod,
            self.sqrt_recipm1_alphas_cumprod)))

    def split(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by the network's output for the configured prediction type."""
        return split_prediction(self.prediction, x_t, model_output, self.coefficients(t, x_t))

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return split_prediction("eps", x_t, eps, self.coefficients(t, x_t))[0]

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return split_prediction("x0", x_t, x0, self.coefficients(t, x_t))[1]

    def v_from(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0."""
        return velocity(x0, eps, self.coefficients(t, x0))

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        """The clean sample implied by the network's output (for the configured prediction type)."""
        return self.split(x_t, t, model_output)[0]

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        """The noise implied by the network's output."""
        return self.split(x_t, t, model_output)[1]

    def predict_v(self, x_t: torch.Tensor, t: torch.Tensor, model_output: torch.Tensor) -> torch.Tensor:
        """The velocity implied by the network's output."""
        if self.prediction == "v":
            return model_output
        return self.v_from(*self.split(x_t, t, model_output), t)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network should output for x_t = q_sample(x0, t, noise)."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        return self.v_from(x0, noise, t)

    # -- posterior ---------------------------------------------------------------------------------------

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x0) (DDPM eq. 6-7). The variance and
        log-variance have shape (B, 1, ..., 1) and broadcast over x_t."""
        mean = self._extract(self.posterior_mean_coef1, t, x_t) * x0 + (
            self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self._extract(self.posterior_variance, t, x_t)
        log_variance = self._extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    # -- training ----------------------------------------------------------------------------------------

    def sample_timesteps(
        self, batch: int, device: torch.device | str | None = None, generator: Generators = None
    ) -> torch.Tensor:
        """Uniform int64 timesteps in [0, T), one per sample."""
        return randint(self.num_timesteps, batch, generator, device)

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weights (float32, on t's device).

        Min-SNR-gamma (Hang et al. 2023) caps the x0-space weight at gamma so that nearly-clean steps do not
        dominate training; expressed in the loss of each prediction type it is min(SNR, gamma) / SNR for eps,
        min(SNR, gamma) / (SNR + 1) for v, and min(SNR, gamma) for x0.
        """
        t = torch.as_tensor(t)
        if self.loss_weighting == "none":
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        snr = (self.alphas_cumprod / (1.0 - self.alphas_cumprod))[t.long().cpu()]
        capped = snr.clamp(max=self.min_snr_gamma)
        weight = {"eps": capped / snr, "v": capped / (snr + 1.0), "x0": capped}[self.prediction]
        return weight.to(device=t.device, dtype=torch.float32)

    def training_loss(
        self,
        model_fn: ModelFn,
        x0: torch.Tensor,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: Generators = None,
    ) -> dict[str, torch.Tensor]:
        """Noise `x0`, run the model, and return the (weighted) MSE against `target`.

        Returns a dict with `loss` (scalar, the mean of `per_sample`), `per_sample` (B,) weighted losses,
        `mse` (B,) unweighted MSE (for logging), and the timesteps `t` that were used. `t` and `noise` are
        drawn from `generator` when not given.
        """
        batch = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(batch, x0.device, generator)
        if noise is None:
            noise = randn(x0.shape, generator, x0.device, x0.dtype)
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        x_t = self.q_sample(x0, t, noise)
        output = model_fn(x_t, t)
        target = self.target(x0, noise, t)
        if output.shape != target.shape:
            raise ValueError(f"model output shape {tuple(output.shape)} != target shape {tuple(target.shape)}")
        # The loss in float32 even under autocast: fp16 squared errors overflow/underflow easily.
        mse = (output.float() - target.float()).pow(2).reshape(batch, -1).mean(dim=1)
        per_sample = self.loss_weights(t).to(mse.device) * mse
        return {"loss": per_sample.mean(), "per_sample": per_sample, "mse": mse.detach(), "t": t}
