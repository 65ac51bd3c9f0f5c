"""Noise schedules: the betas of the forward process q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

Betas are float64 because alphas_cumprod is a product of up to 1000 factors and the later closed-form
conversions (x0 <-> eps <-> v) divide by quantities close to 0 or 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alphas_cumprod(t) = f(t) / f(0), f(t) = cos^2((t/T + s) / (1 + s) * pi/2).

    The offset `s` keeps beta_0 from being vanishingly small; clipping at `max_beta` avoids the singularity
    at t = T where f(T) = 0.
    """
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=max_beta)


def linear_betas(num_timesteps: int) -> torch.Tensor:
    """Ho et al. 2020: beta from 1e-4 to 0.02 over 1000 steps, scaled by 1000/T so that shorter chains add
    the same total noise (improved-diffusion's convention)."""
    scale = 1000 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


SCHEDULES: dict[str, Callable[[int], torch.Tensor]] = {"cosine": cosine_betas, "linear": linear_betas}


def make_betas(schedule: str, num_timesteps: int = 1000) -> torch.Tensor:
    """Betas (float64, shape (T,)) of a named schedule; ValueError for an unknown name or a bad T."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    betas = SCHEDULES[schedule](num_timesteps)
    if not bool((betas < 1).all()):
        # Only reachable for "linear" with T <= 20: its scaled beta_end reaches 1 and wipes out the signal.
        raise ValueError(
            f"schedule {schedule!r} with num_timesteps={num_timesteps} has a beta >= 1; "
            "use more timesteps (the linear schedule needs at least 21)"
        )
    return betas
