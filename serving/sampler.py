"""DDIM sampling and classifier-free guidance in numpy, numerically the same as `dvdm.diffusion`.

The schedule comes from the manifest (`alphas_cumprod`, float64, exactly as training computed it), the
network's output type from `prediction` (eps, v or x0). Timesteps are spaced as `dvdm.diffusion.samplers.
spaced_timesteps` does: torch.linspace(T-1, 0, n) in float64, rounded half to even; `linspace_torch`
reproduces torch's two-sided linspace formula so the same step count visits the same timesteps.

Arithmetic mirrors the torch sampler: per-step coefficients are float64 scalars applied to float32
arrays, the x0/eps conversions use float64 tables cast to float32 first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from serving.errors import InvalidRequest, ManifestError

PREDICTIONS = ("eps", "v", "x0")
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
    """`num_steps` distinct timesteps from T-1 down to 0 (int64), as the torch sampler picks them."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) \
            or not 1 <= num_steps <= num_timesteps:
        raise InvalidRequest(f"steps must be an integer in [1, {num_timesteps}], got {num_steps!r}")
    return np.round(linspace_torch(float(num_timesteps - 1), 0.0, int(num_steps))).astype(np.int64)


class DDIM:
    """Song et al. 2021 eq. 12 on the exported schedule; eta = 0 is deterministic."""

    def __init__(self, alphas_cumprod: Sequence[float], prediction: str) -> None:
        ac = np.asarray(alphas_cumprod, np.float64)
        if ac.ndim != 1 or ac.size == 0 or not np.all((ac > 0) & (ac <= 1)):
            raise ManifestError("diffusion.alphas_cumprod must be a non-empty list of values in (0, 1]")
        if prediction not in PREDICTIONS:
            raise ManifestError(f"diffusion.prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.alphas_cumprod = ac
        self.prediction = prediction
        self.sqrt_ac = np.sqrt(ac)
        self.sqrt_one_minus_ac = np.sqrt(1.0 - ac)
        self.sqrt_recip_ac = np.sqrt(1.0 / ac)
        self.sqrt_recipm1_ac = np.sqrt(1.0 / ac - 1.0)

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def x0_and_eps(self, x_t: np.ndarray, t: int, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The clean sample and the noise implied by the network's output at timestep t (float32)."""
        f = np.float32
        if self.prediction == "v":
            a, s = f(self.sqrt_ac[t]), f(self.sqrt_one_minus_ac[t])
            return a * x_t - s * out, s * x_t + a * out
        r, rm1 = f(self.sqrt_recip_ac[t]), f(self.sqrt_recipm1_ac[t])
        if self.prediction == "eps":
            return r * x_t - rm1 * out, out
        return out, (r * x_t - out) / rm1

    def sample(self, model_fn: ModelFn, noise: np.ndarray, steps: int, eta: float = 0.0,
               rngs: Sequence[np.random.Generator] | None = None,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        """Run the chain from x_{T-1} = `noise` (B, ...) and return x0. `rngs` (one per sample) draw the
        extra noise when eta > 0."""
        if not eta >= 0 or not np.isfinite(eta):
            raise InvalidRequest(f"eta must be a finite number >= 0, got {eta!r}")
        if eta > 0 and (rngs is None or len(rngs) != len(noise)):
            raise InvalidRequest("eta > 0 needs one random generator per sample")
        timesteps = spaced_timesteps(self.num_timesteps, steps)
        x = np.asarray(noise, np.float32)
        for i, t in enumerate(timesteps.tolist()):
            out = model_fn(x, t)
            if out.shape != x.shape:
                raise RuntimeError(f"denoiser output {out.shape} != x_t {x.shape}")
            x0, eps = self.x0_and_eps(x, t, out)
            ab_t = float(self.alphas_cumprod[t])
            ab_prev = float(self.alphas_cumprod[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
            sigma = eta * ((1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)) ** 0.5
            x = ab_prev ** 0.5 * x0 + max(1 - ab_prev - sigma ** 2, 0.0) ** 0.5 * eps
            if sigma > 0:
                assert rngs is not None
                z = np.stack([g.standard_normal(x.shape[1:], dtype=np.float32) for g in rngs])
                x = x + sigma * z
            x = x.astype(np.float32, copy=False)
            if progress is not None:
                progress(i, len(timesteps))
        return x


def check_guidance(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) or not np.isfinite(scale) \
            or scale < 0:
        raise InvalidRequest(f"guidance must be a finite number >= 0 (0 = unconditional), got {scale!r}")
    return float(scale)


def guide(cond: np.ndarray, uncond: np.ndarray, scale: float) -> np.ndarray:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + float(scale) * (cond - uncond)
