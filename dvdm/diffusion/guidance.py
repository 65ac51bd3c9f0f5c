"""Classifier-free guidance on torch models, batched: the cond and uncond passes share one forward call.

The scale check and the mix itself are the runtime core's (`dvdm.runtime.guidance`), shared with the
service; scale 1 and 0 skip the second pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from dvdm.runtime.guidance import check_guidance, guide


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float))


def _as_batch(value: Any, batch: int, device: torch.device) -> Any:
    """A number or bool as a (B,) tensor; anything else unchanged."""
    return torch.full((batch,), value, device=device) if _is_scalar(value) else value


def batched_guidance(
    model: Callable[..., torch.Tensor],
    x: torch.Tensor,
    t: torch.Tensor,
    cond_kwargs: Mapping[str, Any],
    uncond_kwargs: Mapping[str, Any],
    scale: float,
) -> torch.Tensor:
    """Guided output of `model(x, t, **kwargs)` from ONE forward pass on a doubled batch.

    `cond_kwargs` and `uncond_kwargs` have the same keys. Tensor values have the batch first and are
    concatenated (cond first). A number or bool that differs between the two (e.g. `drop_text=False` /
    `True`) becomes a (B,) tensor per branch, so per-sample flags batch too. Anything else (None, strings)
    must be equal in both and is passed as is.
    """
    scale = check_guidance(scale)
    if scale == 1.0:
        return model(x, t, **cond_kwargs)
    if scale == 0.0:
        return model(x, t, **uncond_kwargs)
    if set(cond_kwargs) != set(uncond_kwargs):
        raise ValueError(
            f"cond and uncond kwargs differ in keys: {sorted(cond_kwargs)} vs {sorted(uncond_kwargs)}"
        )
    batch = x.shape[0]
    kwargs: dict[str, Any] = {}
    for key, cond in cond_kwargs.items():
        uncond = uncond_kwargs[key]
        if _is_scalar(cond) and _is_scalar(uncond) and cond == uncond and type(cond) is type(uncond):
            kwargs[key] = cond
            continue
        if _is_scalar(cond) or _is_scalar(uncond):
            cond, uncond = _as_batch(cond, batch, x.device), _as_batch(uncond, batch, x.device)
        if isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor):
            if cond.shape[:1] != (batch,) or uncond.shape[:1] != (batch,):
                shapes = f"{tuple(cond.shape)} and {tuple(uncond.shape)}"
                raise ValueError(f"{key}: expected batch size {batch} first, got {shapes}")
            kwargs[key] = torch.cat([cond, uncond])
        elif isinstance(cond, torch.Tensor) or isinstance(uncond, torch.Tensor) or cond != uncond:
            raise ValueError(f"{key}: non-tensor conditioning must be the same for cond and uncond, or a number")
        else:
            kwargs[key] = cond
    t = torch.as_tensor(t, device=x.device)
    t = t.expand(batch) if t.ndim == 0 else t
    out_cond, out_uncond = model(torch.cat([x, x]), torch.cat([t, t]), **kwargs).chunk(2)
    return guide(out_cond, out_uncond, scale)
