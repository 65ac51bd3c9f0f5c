"""Diffusion math, separate from the network: schedules, the Gaussian process and its loss, samplers, guidance."""

from dvdm.diffusion.gaussian import LOSS_WEIGHTINGS, PREDICTIONS, GaussianDiffusion, ModelFn
from dvdm.diffusion.guidance import batched_guidance
from dvdm.diffusion.noise import randint, randn
from dvdm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, spaced_timesteps
from dvdm.diffusion.schedules import SCHEDULES, cosine_betas, linear_betas, make_betas

__all__ = [
    "LOSS_WEIGHTINGS",
    "PREDICTIONS",
    "SCHEDULES",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "GaussianDiffusion",
    "ModelFn",
    "batched_guidance",
    "cosine_betas",
    "linear_betas",
    "make_betas",
    "randint",
    "randn",
    "spaced_timesteps",
]
