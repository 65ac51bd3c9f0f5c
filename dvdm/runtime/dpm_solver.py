"""DPM-Solver++(2M) (Lu et al. 2022, multistep, data prediction), written once for numpy and torch.

The sampler visits the same timesteps as DDIM (`ddim.spaced_timesteps`) and, like DDIM with eta = 0, is
deterministic; its first step and its last two are DDIM's. In between it extrapolates the predicted clean sample
from the last two model calls, which is second-order accurate in the log-SNR step size, so it reaches the
quality of 50 DDIM steps in far fewer model calls (diffusers' `DPMSolverMultistepScheduler` with
`algorithm_type="dpmsolver++"`, `solver_order=2`, `lower_order_final=True`, final sigma zero).
Higher order is not better at every step count: data whose x0 prediction changes late (low variance) gains
little, because evenly spaced timesteps take the longest log-SNR steps at the end; the prompt-swap benchmark
decides the service's default (docs/DECISIONS.md).

With lambda = log(alpha) - log(sigma) (alpha = sqrt(alpha_bar), sigma = sqrt(1 - alpha_bar)), the step from t
to s (h = lambda_s - lambda_t, r = (lambda_t - lambda_prev) / h) is

    x_s = sigma_s / sigma_t * x_t + alpha_s (1 - e^-h) (D0 + D1 / (2 r)),   D0 = x0_t, D1 = x0_t - x0_prev

and with D1 = 0 (first order) it is DDIM. Every coefficient is a float64 Python scalar, so the update is plain
arithmetic on numpy arrays (the service) or torch tensors (`dvdm.diffusion.samplers`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple


class MultistepCoefficients(NamedTuple):
    """x_next = c_x * x_t + c_x0 * x0 + c_prev * x0_prev (float64 Python scalars)."""

    c_x: float
    c_x0: float
    c_prev: float


def _log_snr(alpha_bar: float) -> float:
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


def dpm_solver_coefficients(alphas_cumprod: Sequence[float], timesteps: Sequence[int],
                            index: int) -> MultistepCoefficients:
    """The update from timesteps[index] to the next visited timestep (to x0 itself after the last one).

    Second order wherever a previous prediction exists (index >= 1), except the last two steps: into the
    last visited timestep (t = 0) and the jump from there to x0 (sigma = 0, an infinite log-SNR step).
    With evenly spaced t those steps are the longest in log-SNR and extrapolating x0 across them overshoots
    (measured on Gaussian data, tests/test_diffusion.py); diffusers' `lower_order_final` makes the same
    choice, as its schedule ends with one first-order jump to x0."""
    ab_t = float(alphas_cumprod[int(timesteps[index])])
    if index + 1 >= len(timesteps):
        return MultistepCoefficients(0.0, 1.0, 0.0)
    ab_s = float(alphas_cumprod[int(timesteps[index + 1])])
    if ab_s >= 1.0:
        return MultistepCoefficients(0.0, 1.0, 0.0)
    h = _log_snr(ab_s) - _log_snr(ab_t)
    c_x = math.sqrt((1.0 - ab_s) / (1.0 - ab_t))
    a = math.sqrt(ab_s) * -math.expm1(-h)  # alpha_s (1 - e^-h)
    if index == 0 or index + 2 >= len(timesteps):
        return MultistepCoefficients(c_x, a, 0.0)
    ab_prev = float(alphas_cumprod[int(timesteps[index - 1])])
    r = (_log_snr(ab_t) - _log_snr(ab_prev)) / h
    return MultistepCoefficients(c_x, a * (1.0 + 0.5 / r), -a * 0.5 / r)
