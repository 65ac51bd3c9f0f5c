"""Seeded random draws where each sample can own its generator.

With one `torch.Generator` per sample, sample i's noise depends only on its own seed, so a video is
reproducible from (seed, inputs) whatever batch it was generated in. Per-sample draws happen on the
generator's device (CPU for CPU generators) and are then moved, so a seed gives the same noise on CPU and CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchShard:
    """Rows [start, stop) of a batch of `total` split across data-parallel processes: every draw is made for
    the whole batch from `generator` (each process holds it in the same state) and this process keeps its
    rows, so N processes draw exactly what one process would at the same global batch."""

    generator: torch.Generator
    start: int
    stop: int
    total: int

    def check(self, batch: int) -> None:
        if batch != self.stop - self.start:
            raise ValueError(f"a draw for {batch} rows from the shard [{self.start}, {self.stop}) of {self.total}")


Generators = torch.Generator | Sequence[torch.Generator] | BatchShard | None


def _as_list(generator: Generators, batch: int) -> list[torch.Generator] | None:
    if generator is None or isinstance(generator, (torch.Generator, BatchShard)):
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
    if isinstance(generator, BatchShard):
        generator.check(shape[0])
        return randn((generator.total, *shape[1:]), generator.generator, device, dtype)[generator.start:generator.stop]
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


def _per_row(draw, batch: int, generator: Generators, device) -> torch.Tensor:
    """`batch` values of `draw(n, generator=, device=)` (a 1-D torch sampler) under the conventions of `randn`."""
    if isinstance(generator, BatchShard):
        generator.check(batch)
        return _per_row(draw, generator.total, generator.generator, device)[generator.start:generator.stop]
    gens = _as_list(generator, batch)
    if generator is None:
        return draw(batch, device=device)
    if gens is None:
        out = draw(batch, generator=generator, device=generator.device)
    else:
        out = torch.cat([draw(1, generator=g, device=g.device) for g in gens])
    return out.to(device)


def randint(
    high: int, batch: int, generator: Generators = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """`batch` uniform int64 values in [0, high), with the same generator conventions as `randn`."""
    return _per_row(lambda n, **kw: torch.randint(0, high, (n,), **kw), batch, generator, device)


def rand(batch: int, generator: Generators = None, device: torch.device | str | None = None) -> torch.Tensor:
    """`batch` uniform float32 values in [0, 1), with the same generator conventions as `randn`."""
    return _per_row(lambda n, **kw: torch.rand(n, **kw), batch, generator, device)
