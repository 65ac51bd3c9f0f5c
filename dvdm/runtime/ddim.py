"""DDIM sampling math (Song et al. 2021, eq. 12), written once for numpy and torch.

- `spaced_timesteps`: which timesteps of the T-step training chain a sampler with n steps visits
  (torch.linspace(T-1, 0, n) in float64, rounded half to even; `linspace_torch` reproduces torch's
  two-sided formula bit for bit, so the service and the trainer visit the same timesteps).
- `split_prediction`: the clean sample x0 and the noise eps implied by the network's output for a
  prediction type (eps, v or x0), given the schedule coefficients at t. Plain arithmetic: numpy arrays with
  float32 scalars (the service) or torch tensors with broadcast coefficient tensors (`dvdm.diffusion`).
- `ddim_coefficients`: the per-step scalars of the update x_prev = c_x0 x0 + c_eps eps + sigma z.
- `DDIM`: the service's numpy sampling loop over these, or over DPM-Solver++(2M)'s coefficients
  (`dvdm.runtime.dpm_solver`); the torch samplers live in `dvdm.diffusion`.

Notation: alpha_bar_t = prod_{s<=t} (1 - beta_s); x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps;
v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import numpy as np

from dvdm.runtime.dpm_solver import dpm_solver_coefficients
from dvdm.runtime.errors import GenerationCancelled, InvalidRequest, ManifestError

PREDICTIONS = ("eps", "v", "x0")
SOLVERS = ("ddim", "dpm++")  # what the numpy loop runs (dpm++: `dvdm.runtime.dpm_solver`)
Array = TypeVar("Array")
ModelFn = Callable[[np.ndarray, int], np.ndarray]


def linspace_torch(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float64) bit for bit: the first half counts up from
    `start`, the second half down from `end`."""
    if steps == 1:
        return np.array([start], np.float64)
    step = (end - start) / (steps - 1)
    i = np.arange(steps, dtype=np.float64)
    halfway = steps // 2
    return np.where(np.arange(steps) < halfway, start + step * i, end - step * (steps - 1 - i))


def spaced_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """`num_steps` distinct timesteps of a T-step chain, evenly spaced, descending from T-1 to 0 (int64).

    One step gives [T-1]: a single jump from pure noise to the predicted x0. InvalidRequest (a ValueError)
    for a step count outside [1, T].
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) \
            or not 1 <= num_steps <= num_timesteps:
        raise InvalidRequest(f"steps must be an integer in [1, {num_timesteps}], got {num_steps!r}")
    # Stride (T-1)/(n-1) >= 1, so rounding never produces duplicates.
    return np.round(linspace_torch(float(num_timesteps - 1), 0.0, int(num_steps))).astype(np.int64)


class Coefficients(NamedTuple):
    """The schedule at timestep t, as scalars or as arrays/tensors that broadcast over x_t."""

    sqrt_ac: object            # sqrt(alpha_bar)
    sqrt_one_minus_ac: object  # sqrt(1 - alpha_bar)
    sqrt_recip_ac: object      # sqrt(1 / alpha_bar)
    sqrt_recipm1_ac: object    # sqrt(1 / alpha_bar - 1)


class ScheduleTables(NamedTuple):
    """`Coefficients` for every timestep (float64 arrays), from alphas_cumprod."""

    sqrt_ac: np.ndarray
    sqrt_one_minus_ac: np.ndarray
    sqrt_recip_ac: np.ndarray
    sqrt_recipm1_ac: np.ndarray

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Sequence[float] | np.ndarray) -> ScheduleTables:
        ac = np.asarray(alphas_cumprod, np.float64)
        return cls(np.sqrt(ac), np.sqrt(1.0 - ac), np.sqrt(1.0 / ac), np.sqrt(1.0 / ac - 1.0))

    def at(self, t: int, dtype: type = np.float32) -> Coefficients:
        """The coefficients at timestep t as scalars of `dtype` (float32: the network's precision)."""
        return Coefficients(*(dtype(table[t]) for table in self))


def split_prediction(prediction: str, x_t: Array, output: Array, c: Coefficients) -> tuple[Array, Array]:
    """(x0, eps) implied by the network's `output` at x_t for `prediction` (eps, v or x0)."""
    if prediction == "v":
        return c.sqrt_ac * x_t - c.sqrt_one_minus_ac * output, c.sqrt_one_minus_ac * x_t + c.sqrt_ac * output
    if prediction == "eps":
        return c.sqrt_recip_ac * x_t - c.sqrt_recipm1_ac * output, output
    if prediction == "x0":
        return output, (c.sqrt_recip_ac * x_t - output) / c.sqrt_recipm1_ac
    raise ValueError(f"unknown prediction {prediction!r}; known: {', '.join(PREDICTIONS)}")


def velocity(x0: Array, eps: Array, c: Coefficients) -> Array:
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0."""
    return c.sqrt_ac * eps - c.sqrt_one_minus_ac * x0


class DDIMStep(NamedTuple):
    """x_prev = c_x0 * x0 + c_eps * eps + sigma * z (float64 Python scalars)."""

    c_x0: float
    c_eps: float
    sigma: float


def ddim_coefficients(alphas_cumprod: Sequence[float], timesteps: Sequence[int], index: int,
                      eta: float) -> DDIMStep:
    """The update from timesteps[index] to the next visited timestep (x0 itself after the last one)."""
    ab_t = float(alphas_cumprod[int(timesteps[index])])
    ab_prev = float(alphas_cumprod[int(timesteps[index + 1])]) if index + 1 < len(timesteps) else 1.0
    sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)) ** 0.5
    return DDIMStep(ab_prev ** 0.5, max(1 - ab_prev - sigma ** 2, 0.0) ** 0.5, sigma)


def check_eta(eta: float) -> float:
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not np.isfinite(eta) or eta < 0:
        raise InvalidRequest(f"eta must be a finite number >= 0, got {eta!r}")
    return float(eta)


def check_solver(solver: str, eta: float = 0.0) -> str:
    """InvalidRequest unless `solver` is a known deterministic-or-DDIM choice consistent with `eta`."""
    if solver not in SOLVERS:
        raise InvalidRequest(f"sampler must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if solver != "ddim" and eta > 0:
        raise InvalidRequest(f"sampler {solver} is deterministic: eta must be 0, got {eta}")
    return solver


class DDIM:
    """The numpy DDIM sampler on an exported schedule; eta = 0 is deterministic.

    Arithmetic mirrors the torch sampler: per-step coefficients are float64 scalars applied to float32
    arrays, the x0/eps conversions use float64 tables cast to float32 first.
    """

    def __init__(self, alphas_cumprod: Sequence[float], prediction: str) -> None:
        ac = np.asarray(alphas_cumprod, np.float64)
        if ac.ndim != 1 or ac.size == 0 or not np.all((ac > 0) & (ac <= 1)):
            raise ManifestError("diffusion.alphas_cumprod must be a non-empty list of values in (0, 1]")
        if prediction not in PREDICTIONS:
            raise ManifestError(f"diffusion.prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.alphas_cumprod = ac
        self.prediction = prediction
        self.tables = ScheduleTables.from_alphas_cumprod(ac)

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def x0_and_eps(self, x_t: np.ndarray, t: int, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The clean sample and the noise implied by the network's output at timestep t (float32)."""
        return split_prediction(self.prediction, x_t, out, self.tables.at(t))

    def sample(self, model_fn: ModelFn, noise: np.ndarray, steps: int, eta: float = 0.0,
               rngs: Sequence[np.random.Generator] | None = None,
               progress: Callable[[int, int], None] | None = None,
               should_stop: Callable[[], bool] | None = None, solver: str = "ddim") -> np.ndarray:
        """Run the chain from x_{T-1} = `noise` (B, ...) and return x0. `rngs` (one per sample) draw the
        extra noise when eta > 0. `should_stop` is asked before every step; when it says True the chain is
        abandoned with GenerationCancelled (a step is the finest point where work can stop). `solver`: "ddim"
        (eta >= 0) or "dpm++" (`dvdm.runtime.dpm_solver`, deterministic: eta must be 0)."""
        eta = check_eta(eta)
        check_solver(solver, eta)
        if eta > 0 and (rngs is None or len(rngs) != len(noise)):
            raise InvalidRequest("eta > 0 needs one random generator per sample")
        timesteps = spaced_timesteps(self.num_timesteps, steps)
        x = np.asarray(noise, np.float32)
        previous_x0 = None
        for i, t in enumerate(timesteps.tolist()):
            if should_stop is not None and should_stop():
                raise GenerationCancelled(f"generation cancelled after {i} of {len(timesteps)} steps")
            out = model_fn(x, t)
            if out.shape != x.shape:
                raise RuntimeError(f"denoiser output {out.shape} != x_t {x.shape}")
            x0, eps = self.x0_and_eps(x, t, out)
            if solver == "dpm++":
                c = dpm_solver_coefficients(self.alphas_cumprod, timesteps, i)
                x = c.c_x * x + c.c_x0 * x0 + (c.c_prev * previous_x0 if c.c_prev else 0.0)
                previous_x0 = x0
            else:
                step = ddim_coefficients(self.alphas_cumprod, timesteps, i, eta)
                x = step.c_x0 * x0 + step.c_eps * eps
                if step.sigma > 0:
                    assert rngs is not None
                    z = np.stack([g.standard_normal(x.shape[1:], dtype=np.float32) for g in rngs])
                    x = x + step.sigma * z
            x = x.astype(np.float32, copy=False)
            if progress is not None:
                progress(i, len(timesteps))
        return x
