"""Tuning helpers shared by the kernels: size buckets, config lists and pruners for the
autotuners, and what the fixed tile rules read (a device's SM count, whether rows are aligned).

A config is described by a tile tuple ``(*meta values, num_warps[, num_stages])`` (the form the
``*_config_space`` functions list); e.g. ``(64, 32, 4, 2)`` is ``BLOCK_M=64, BLOCK_N=32`` with 4
warps and 2 stages. Autotune keys use :func:`pow2_bucket` so nearby sizes share one tuning run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable

import torch
import triton

from . import INTERPRET

Prune = Callable[..., list[triton.Config]]

# The SM count the launchers plan grids for on CPU tensors (Triton's interpreter has no device):
# small, so that the tests' tiny shapes take the paths a GPU takes for small grids.
INTERPRET_SM_COUNT = 8


@functools.cache
def _cuda_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def device_sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a CUDA device; cached per device), or
    ``INTERPRET_SM_COUNT`` for any other device."""
    if device.type != "cuda":
        return INTERPRET_SM_COUNT
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_sm_count(index)


def rows_aligned(*tensors: torch.Tensor) -> bool:
    """Whether every tensor starts 16-byte aligned and has all strides but the last multiples
    of 16 elements: what a Triton launch specialises (``tt.divisibility``) into 128-bit
    accesses. Rows without it load element by element, one address per element in registers,
    so the attention launchers give them smaller tiles."""
    return all(
        t.data_ptr() % 16 == 0 and all(int(s) % 16 == 0 for s in t.stride()[:-1]) for t in tensors
    )


def pow2_bucket(n: int, cap: int) -> int:
    """Autotune key for a size: the next power of two of ``max(n, 1)``, at most ``cap``."""
    return min(triton.next_power_of_2(max(n, 1)), cap)


def rows_bucket(n_rows: int) -> int:
    """Autotune key for a row count: the next power of two, capped at 2**16."""
    return pow2_bucket(n_rows, 1 << 16)


def make_configs(
    tiles: Iterable[tuple[int, ...]], *names: str, num_stages: int | None = None
) -> list[triton.Config]:
    """One config per tile ``(*values of names, num_warps[, num_stages])``; a fixed
    ``num_stages`` applies when the tiles carry none."""
    configs = []
    for tile in tiles:
        meta = dict(zip(names, tile, strict=False))
        warps = tile[len(names)]
        stages = tile[len(names) + 1] if num_stages is None else num_stages
        configs.append(triton.Config(meta, num_warps=warps, num_stages=stages))
    return configs


def tile_of(config: triton.Config, *names: str, stages: bool = False) -> tuple[int, ...]:
    """The tile tuple of ``config`` (inverse of :func:`make_configs`)."""
    tile = (*(config.kwargs[n] for n in names), config.num_warps)
    return (*tile, config.num_stages) if stages else tile


def configs_in(
    configs: Iterable[triton.Config],
    allowed: Collection[tuple[int, ...]],
    *names: str,
    stages: bool = False,
) -> list[triton.Config]:
    """The configs whose tile tuple is in ``allowed``."""
    return [c for c in configs if tile_of(c, *names, stages=stages) in allowed]


def short_tile_pruner(
    candidates: Callable[[int], list[tuple[int, int]]], width: str, tile: str, bucket: str
) -> Prune:
    """``early_config_prune`` of the memory-bound kernels (embedding, RoPE).

    Keeps the configs whose ``(tile, num_warps)`` ``candidates(<width meta value>)`` lists,
    then those whose ``tile`` is no taller than the call's ``bucket`` argument (taller tiles
    only add masked rows; the shortest stays if none fits). The interpreter cannot benchmark
    and pays per program, so it runs the single tallest tile.
    """

    def prune(configs, named_args, **kwargs):
        fitting = configs_in(configs, candidates(kwargs[width]), tile)
        short = [c for c in fitting if c.kwargs[tile] <= named_args[bucket]]
        fitting = short or [min(fitting, key=lambda c: (c.kwargs[tile], c.num_warps))]
        if INTERPRET:
            return [max(fitting, key=lambda c: (c.kwargs[tile], -c.num_warps))]
        return fitting

    return prune
