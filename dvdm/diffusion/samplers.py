"""Samplers: walk a trained model from noise to a sample, diffusers-style (`set_timesteps`, `step`, `sample`).

Both samplers visit a subset of the training chain's timesteps, evenly spaced from T-1 down to 0, so the
first model call sees (almost) pure noise and the last step returns the predicted x0.

- `DDPMSampler`: ancestral sampling. With fewer steps than T it *respaces* the chain (improved-diffusion's
  `SpacedDiffusion`): the betas of the shorter chain are recomputed from alphas_cumprod at the visited
  timesteps, so every step still uses a proper posterior q(x_{t_prev} | x_t, x0).
- `DDIMSampler`: Song et al. 2021; eta = 0 is deterministic, eta = 1 has DDPM's posterior variance.
- `DPMSolverSampler`: DPM-Solver++(2M) (Lu et al. 2022), deterministic; its coefficients are the runtime
  core's (`dvdm.runtime.dpm_solver`), so the service's numpy loop takes the same steps.

The prediction type (eps / v / x0) comes from the `GaussianDiffusion` object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from dvdm.diffusion.gaussian import GaussianDiffusion, ModelFn
from dvdm.diffusion.noise import Generators, randn
from dvdm.runtime.ddim import check_eta, ddim_coefficients, split_prediction
from dvdm.runtime.dpm_solver import dpm_solver_coefficients
from dvdm.runtime.ddim import spaced_timesteps as runtime_spaced_timesteps

Progress = Callable[[int, int], None]


def spaced_timesteps(num_timesteps: int, num_steps: int) -> torch.Tensor:
    """`num_steps` distinct timesteps of a T-step chain, evenly spaced, descending from T-1 to 0 (int64):
    the runtime core's choice (`dvdm.runtime.ddim.spaced_timesteps`), so the service visits the same ones."""
    return torch.from_numpy(runtime_spaced_timesteps(num_timesteps, num_steps))


class _Sampler:
    """Timestep selection and the sampling loop; subclasses define `step`."""

    timesteps: torch.Tensor

    def __init__(self, diffusion: GaussianDiffusion, clip_x0: float | None = None) -> None:
        if clip_x0 is not None and not clip_x0 > 0:
            raise ValueError(f"clip_x0 must be None or > 0, got {clip_x0!r}")
        self.diffusion = diffusion
        self.clip_x0 = clip_x0
        self.set_timesteps(diffusion.num_timesteps)

    def set_timesteps(self, num_steps: int) -> None:
        """Choose `num_steps` evenly spaced timesteps of the training chain (see `spaced_timesteps`)."""
        self.timesteps = spaced_timesteps(self.diffusion.num_timesteps, num_steps)
        self._positions = {int(t): i for i, t in enumerate(self.timesteps.tolist())}

    def step(
        self, model_output: torch.Tensor, t: int, x_t: torch.Tensor, generator: Generators = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def _index(self, t: int | torch.Tensor) -> int:
        t = int(t)
        index = self._positions.get(t)
        if index is None:
            raise ValueError(f"timestep {t} is not in this sampler's schedule; call set_timesteps first")
        return index

    def _alphas_cumprod(self, index: int) -> tuple[float, float]:
        """alpha_bar at step `index` of `timesteps` and at the step after it (1.0 after the last: x_{-1} = x0)."""
        ac = self.diffusion.alphas_cumprod
        ab_t = float(ac[int(self.timesteps[index])])
        ab_prev = float(ac[int(self.timesteps[index + 1])]) if index + 1 < len(self.timesteps) else 1.0
        return ab_t, ab_prev

    def _clip(self, x0: torch.Tensor) -> torch.Tensor:
        return x0 if self.clip_x0 is None else x0.clamp(-self.clip_x0, self.clip_x0)

    @torch.no_grad()
    def sample(
        self,
        model_fn: ModelFn,
        shape: Sequence[int],
        *,
        num_steps: int,
        generator: Generators = None,
        noise: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        progress: Progress | None = None,
    ) -> torch.Tensor:
        """Run the full chain and return x0.

        :param model_fn: `model_fn(x_t, t)` with t an int64 (B,) tensor of original-chain timesteps.
        :param generator: None, one generator, or one per sample (then sample i depends only on its seed).
        :param noise: the starting x_{T-1}; drawn from `generator` when None.
        :param device: where to sample; defaults to `noise`'s device, else torch's default device.
        :param progress: called as `progress(i, total)` after step i (0-based) of `total` finishes.
        """
        shape = tuple(shape)
        if noise is not None:
            if tuple(noise.shape) != shape:
                raise ValueError(f"noise shape {tuple(noise.shape)} != requested shape {shape}")
            x = noise.to(device) if device is not None else noise
        else:
            x = randn(shape, generator, device if device is not None else torch.get_default_device())
        self.set_timesteps(num_steps)
        total = len(self.timesteps)
        for i, t in enumerate(self.timesteps.tolist()):
            t_batch = torch.full((shape[0],), t, dtype=torch.long, device=x.device)
            x = self.step(model_fn(x, t_batch), t, x, generator)
            if progress is not None:
                progress(i, total)
        return x

    def _begin_step(self, model_output: torch.Tensor, t: int, x_t: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Check a step's inputs; its position in `timesteps` and t as a (B,) batch."""
        if model_output.shape != x_t.shape:
            raise ValueError(f"model output shape {tuple(model_output.shape)} != x_t shape {tuple(x_t.shape)}")
        return self._index(t), torch.full((x_t.shape[0],), int(t), dtype=torch.long)


class DDPMSampler(_Sampler):
    """Ancestral sampling with the posterior variance ("fixed small"), on a respaced chain.

    :param diffusion: the training process (schedule and prediction type).
    :param clip_x0: clip the predicted x0 to [-clip_x0, clip_x0]; None (default) because our targets are
        normalised to unit variance, not bounded to [-1, 1].
    """

    def step(
        self, model_output: torch.Tensor, t: int, x_t: torch.Tensor, generator: Generators = None
    ) -> torch.Tensor:
        """x_{t_prev} ~ q(x_{t_prev} | x_t, x0_pred); `t` is an original-chain timestep from `timesteps`."""
        index, t_batch = self._begin_step(model_output, t, x_t)
        x0 = self._clip(self.diffusion.predict_x0(x_t, t_batch, model_output))
        ab_t, ab_prev = self._alphas_cumprod(index)
        # Respacing: the shorter chain keeps alpha_bar at the visited steps, so its step is
        # alpha = alpha_bar[t] / alpha_bar[t_prev], beta = 1 - alpha. The ratio is taken directly (not as
        # 1 - beta) because near t = T-1 alpha ~ 1e-9 and 1 - (1 - alpha) would lose most of its digits.
        alpha = ab_t / ab_prev
        beta = 1.0 - alpha
        # DDPM eq. 7 for the respaced chain, in float64 Python floats.
        coef_x0 = beta * ab_prev**0.5 / (1.0 - ab_t)
        coef_xt = (1.0 - ab_prev) * alpha**0.5 / (1.0 - ab_t)
        mean = coef_x0 * x0 + coef_xt * x_t
        if index == len(self.timesteps) - 1:  # the last step has zero variance and its mean is x0
            return mean
        std = (beta * (1.0 - ab_prev) / (1.0 - ab_t)) ** 0.5
        return mean + std * randn(x_t.shape, generator, x_t.device, x_t.dtype)


class DDIMSampler(_Sampler):
    """Denoising diffusion implicit models (Song et al. 2021, eq. 12).

    :param diffusion: the training process (schedule and prediction type).
    :param eta: 0 gives the deterministic DDIM sampler; 1 matches DDPM's posterior variance.
    :param clip_x0: see `DDPMSampler`.
    """

    def __init__(self, diffusion: GaussianDiffusion, eta: float = 0.0, clip_x0: float | None = None) -> None:
        self.eta = check_eta(eta)
        super().__init__(diffusion, clip_x0)

    def step(
        self, model_output: torch.Tensor, t: int, x_t: torch.Tensor, generator: Generators = None
    ) -> torch.Tensor:
        """One DDIM update from original-chain timestep `t` to the next one in `timesteps`."""
        index, t_batch = self._begin_step(model_output, t, x_t)
        d = self.diffusion
        coefficients = d.coefficients(t_batch, x_t)
        x0, eps = split_prediction(d.prediction, x_t, model_output, coefficients)
        if self.clip_x0 is not None:
            # Recompute eps from the clipped x0 so the update stays consistent with x_t (improved-diffusion).
            x0 = self._clip(x0)
            eps = split_prediction("x0", x_t, x0, coefficients)[1]
        step = ddim_coefficients(d.alphas_cumprod, self.timesteps, index, self.eta)  # float64 Python floats
        x_prev = step.c_x0 * x0 + step.c_eps * eps
        if step.sigma > 0:
            x_prev = x_prev + step.sigma * randn(x_t.shape, generator, x_t.device, x_t.dtype)
        return x_prev


class DPMSolverSampler(_Sampler):
    """DPM-Solver++(2M): second-order multistep on the predicted x0 (see `dvdm.runtime.dpm_solver`).

    Keeps the previous step's x0 prediction; `set_timesteps` (called by `sample`) forgets it.
    """

    def set_timesteps(self, num_steps: int) -> None:
        super().set_timesteps(num_steps)
        self._previous_x0: torch.Tensor | None = None

    def step(
        self, model_output: torch.Tensor, t: int, x_t: torch.Tensor, generator: Generators = None
    ) -> torch.Tensor:
        """One DPM-Solver++ update from original-chain timestep `t` to the next one in `timesteps`."""
        index, t_batch = self._begin_step(model_output, t, x_t)
        d = self.diffusion
        x0 = self._clip(split_prediction(d.prediction, x_t, model_output, d.coefficients(t_batch, x_t))[0])
        c = dpm_solver_coefficients(d.alphas_cumprod, self.timesteps, index)  # float64 Python floats
        if c.c_prev and self._previous_x0 is None:
            raise ValueError("DPM-Solver++ steps must run in order from the first timestep")
        x_prev = c.c_x * x_t + c.c_x0 * x0
        if c.c_prev:
            x_prev = x_prev + c.c_prev * self._previous_x0
        self._previous_x0 = x0
        return x_prev
