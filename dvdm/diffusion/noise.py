"""Seeded random draws where each sample can own its generator.

With one `torch.Generator` per sample, sample i's noise depends only on its own seed, so a video is
reproducible from (seed, inputs) whatever batch it was generated in. Per-sample draws happen on the
generator's device (CPU for CPU generators) and are then moved, so a seed gives the same noise on CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Generators = torch.Generator | Sequence[torch.Generator] | None


def _as_list(generator: Generators, batch: int) -> list[torch.Generator] | None:
    if generator is None or isinstance(generator, torch.Generator):
        return None
    gens = list(generator)
    if len(gens) != batch:
        raise ValueError(f"got {len(gens)} generators for a batch of {batch}; pass one per sample")
    return gens


def randn(
    shape: Sequence[int],
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Standard normal noise of `shape`; `generator` is None, one generator, or one per sample (shape[0])."""
    shape = tuple(shape)
    dtype = dtype or torch.get_default_dtype()
    gens = _as_list(generator, shape[0] if shape else 0)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    # Draw in float32 (float64 if asked) whatever the target dtype: half-precision draws differ by device.
    draw = torch.float64 if dtype == torch.float64 else torch.float32
    if gens is None:
        out = torch.randn(shape, generator=generator, device=generator.device, dtype=draw)
    else:
        out = torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=draw) for g in gens])
    return out.to(device=device, dtype=dtype)


def randint(
    high: int, batch: int, generator: Generators = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """`batch` uniform int64 values in [0, high), with the same generator conventions as `randn`."""
    gens = _as_list(generator, batch)
    if generator is None:
        return torch.randint(0, high, (batch,), device=device)
    if gens is None:
        out = torch.randint(0, high, (batch,), generator=generator, device=generator.device)
    else:
        out = torch.cat([torch.randint(0, high, (1,), generator=g, device=g.device) for g in gens])
    return out.to(device)
