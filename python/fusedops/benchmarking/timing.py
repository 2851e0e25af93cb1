"""Timing and bandwidth: :func:`measure` (per-call samples), :func:`copy_bandwidth_gbs`.

CUDA is timed with CUDA events around each call (one synchronize at the end), by default with a
256 MiB buffer zeroed between calls so every call starts with a cold L2. CPU is timed with
``time.perf_counter`` around each call, the garbage collector paused; CPU caches are not flushed
(the large cases exceed the last-level cache, small ones run from it, so their fraction of the
copy ceiling can exceed 1).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

_L2_FLUSH_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Timing:
    """Distribution of per-call wall times of one implementation, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    mean_ms: float
    reps: int
    samples_ms: tuple[float, ...] = field(default=(), repr=False)

    def merged(self, other: Timing) -> Timing:
        """The timing of both sample sets together (e.g. interleaved rounds)."""
        return _timing(self.samples_ms + other.samples_ms)


def _timing(times_ms: Sequence[float]) -> Timing:
    """Summarise per-call times (ms); quantiles interpolate linearly between samples."""
    data = sorted(times_ms)
    if len(data) >= 2:
        q = statistics.quantiles(data, n=5, method="inclusive")  # cut points 20/40/60/80 %
        p20, p80 = q[0], q[3]
    else:
        p20 = p80 = data[0]
    return Timing(
        median_ms=statistics.median(data),
        p20_ms=p20,
        p80_ms=p80,
        min_ms=data[0],
        mean_ms=statistics.fmean(data),
        reps=len(data),
        samples_ms=tuple(times_ms),
    )


def as_device(device: torch.device | str) -> torch.device:
    """``device`` as a :class:`torch.device`."""
    return device if isinstance(device, torch.device) else torch.device(device)


def measure(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 3,
    reps: int | None = None,
    min_time: float | None = None,
    min_reps: int = 5,
    max_reps: int = 10_000,
    flush_l2: bool | None = None,
    warmup_time: float | None = None,
) -> Timing:
    """Time ``fn()`` call by call and summarise (median, p20, p80 in ms).

    Args:
        fn: zero-argument callable; its result is discarded. It must already be compiled /
            autotuned (call it once before ``measure``): warm-up calls are not meant to absorb
            a 30 s ``torch.compile``.
        device: where ``fn`` runs. ``cuda`` devices are timed with CUDA events (one
            ``synchronize`` after the loop); others with ``time.perf_counter`` per call.
        warmup: untimed calls first. With ``min_time``, they also estimate the per-call time.
        warmup_time: seconds of untimed calls instead of a count (at least one call), as
            ``triton.testing.do_bench``'s ``warmup`` (ms) does.
        reps: exact number of timed calls. Give either ``reps`` or ``min_time``
            (default: ``min_time=0.5``).
        min_time: seconds of timed calls to aim for; the count is clamped to
            ``[min_reps, max_reps]``.
        flush_l2: zero a 256 MiB buffer before each call (outside the timed window) so no call
            hits in L2. Default: on for CUDA, off for CPU.
    Returns:
        :class:`Timing` of the timed calls.
    """
    dev = as_device(device)
    cuda = dev.type == "cuda"
    if reps is not None and min_time is not None:
        raise ValueError("measure: give reps or min_time, not both")
    if reps is None and min_time is None:
        min_time = 0.5
    if flush_l2 is None:
        flush_l2 = cuda
    flush_buf = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=dev) if flush_l2 else None

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    sync()
    t0 = time.perf_counter()
    if warmup_time is not None:
        warmup = 0
        while warmup == 0 or time.perf_counter() - t0 < warmup_time:
            fn()
            sync()
            warmup += 1
    for _ in range(warmup if warmup_time is None else 0):
        fn()
    sync()
    elapsed = time.perf_counter() - t0
    if reps is None:
        assert min_time is not None
        per_call = elapsed / warmup if warmup > 0 else 0.0
        if per_call <= 0.0:  # no warm-up to learn from: time one call
            t0 = time.perf_counter()
            fn()
            sync()
            per_call = max(time.perf_counter() - t0, 1e-7)
        reps = math.ceil(min_time / per_call)
    reps = max(min_reps, min(max_reps, reps))

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if cuda:
            starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
            for start, end in zip(starts, ends, strict=True):
                if flush_buf is not None:
                    flush_buf.zero_()
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize(dev)
            times_ms = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
        else:
            times_ms = []
            for _ in range(reps):
                if flush_buf is not None:
                    flush_buf.zero_()
                t0 = time.perf_counter()
                fn()
                times_ms.append((time.perf_counter() - t0) * 1e3)
    finally:
        if gc_was_enabled:
            gc.enable()
    return _timing(times_ms)


def gbs(nbytes: int, ms: float) -> float:
    """Achieved bandwidth in GB/s (10^9 bytes per second) of moving ``nbytes`` in ``ms``."""
    return nbytes / (ms * 1e-3) / 1e9


_COPY_GBS: dict[tuple[str, int], float] = {}


def copy_bandwidth_gbs(device: torch.device | str, *, nbytes: int = 256 * 2**20) -> float:
    """Measured copy bandwidth of ``device`` in GB/s: the ceiling for memory-bound kernels.

    Times ``dst.copy_(src)`` for two ``nbytes`` buffers (larger than the GPU's L2; on CPU larger
    than most last-level caches) and counts ``2 * nbytes`` (one read, one write). Like STREAM,
    the ceiling is the *best* of the timed calls, so a preempted call on a shared machine does
    not lower it. On CPU ``copy_`` runs on ``torch.get_num_threads()`` threads, like the kernels
    it is compared with. The result is cached per ``(device, nbytes)`` for the process.
    """
    dev = as_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    key = (str(dev), nbytes)
    if key not in _COPY_GBS:
        src = torch.ones(nbytes // 4, dtype=torch.float32, device=dev)  # touched: no page faults
        dst = torch.zeros_like(src)
        dst.copy_(src)
        timing = measure(lambda: dst.copy_(src), device=dev, warmup=2, reps=30, flush_l2=False)
        _COPY_GBS[key] = gbs(2 * src.numel() * src.element_size(), timing.min_ms)
        del src, dst
    return _COPY_GBS[key]
