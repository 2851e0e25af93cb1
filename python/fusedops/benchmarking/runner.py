"""Running a case: check, warm and time its implementations (:func:`run_case`), one
:class:`Row` per implementation."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from fusedops.benchmarking.accuracy import Accuracy
from fusedops.benchmarking.harness import (
    COMPILE,
    EAGER,
    FUSED,
    Case,
    Impl,
    Mismatch,
    Workload,
    device_label,
    dtype_name,
)
from fusedops.benchmarking.timing import Timing, as_device, copy_bandwidth_gbs, gbs, measure


@dataclass(frozen=True)
class Row:
    """One timed implementation of one case: a CSV record and a table line."""

    op: str
    case: str
    device: str
    dtype: str
    shape: str
    impl: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    gb_s: float | None = None
    frac_of_copy: float | None = None
    tflop_s: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None


def check_case(case: Case, workload: Workload) -> Accuracy:
    """``workload.check()``; raises :class:`Mismatch` naming the case when it fails."""
    accuracy = workload.check()
    if not accuracy.ok:
        raise Mismatch(f"fusedops {case.id} differs from the reference: {accuracy.detail}")
    return accuracy


def time_impls(
    impls: Sequence[Impl],
    device: torch.device,
    *,
    min_time: float,
    rounds: int = 3,
    warmup: int = 2,
    log: Callable[[str], None] | None = None,
    label: str = "",
) -> dict[str, Timing]:
    """Warm and time ``impls`` on ``device``, interleaved.

    Each implementation is called once untimed first (``torch.compile`` and Triton autotuning
    happen here, never inside the timed loop). Then ``rounds`` rounds each call :func:`measure`
    once per implementation for ``min_time / rounds`` seconds, so slow drift of a shared
    machine hits all implementations alike; the samples of all rounds are pooled.
    """
    for impl in impls:
        with impl.context():
            t0 = time.perf_counter()
            impl.fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        if log is not None:
            log(f"  {label} {impl.name}: first call {time.perf_counter() - t0:.2f} s")
    timings: dict[str, Timing] = {}
    for _ in range(max(1, rounds)):
        for impl in impls:
            with impl.context():
                t = measure(
                    impl.fn, device=device, warmup=warmup, min_time=min_time / rounds, min_reps=2
                )
            timings[impl.name] = timings[impl.name].merged(t) if impl.name in timings else t
    if log is not None:
        summary = ", ".join(f"{k} {t.median_ms:.3f} ms ({t.reps} reps)" for k, t in timings.items())
        log(f"  {label}: {summary}")
    return timings


def run_case(
    case: Case,
    device: torch.device | str,
    *,
    min_time: float = 1.0,
    rounds: int = 3,
    warmup: int = 2,
    skip: Iterable[str] = (),
    log: Callable[[str], None] | None = None,
) -> list[Row]:
    """Build, check, warm and time every implementation of ``case`` on ``device``.

    Unless :data:`FUSED` is in ``skip``, the check runs first and a :class:`Mismatch`
    propagates (nothing is timed). Timing is :func:`time_impls`. Speedups are
    ``baseline median / median``.

    Args:
        case: what to run.
        device: where.
        min_time: seconds of timed calls per implementation (all rounds together).
        rounds: interleaved rounds.
        warmup: untimed calls at the start of each :func:`measure`.
        skip: implementation names to leave out (e.g. ``{"compile"}``).
        log: progress callback (one line per step), e.g. ``print``.
    Returns:
        One :class:`Row` per timed implementation, in the workload's order.
    """
    dev = as_device(device)
    skipped = set(skip)
    workload = case.build(dev)
    if FUSED not in skipped:
        check_case(case, workload)
    ceiling = copy_bandwidth_gbs(dev) if workload.min_bytes else None
    impls = [impl for impl in workload.impls if impl.name not in skipped]
    timings = time_impls(
        impls, dev, min_time=min_time, rounds=rounds, warmup=warmup, log=log, label=case.id
    )
    min_bytes, flops = workload.min_bytes, workload.flops
    del workload, impls
    gc.collect()

    rows = []
    for name, t in timings.items():
        rate = gbs(min_bytes, t.median_ms) if min_bytes else None
        rows.append(
            Row(
                op=case.op,
                case=case.name,
                device=device_label(dev),
                dtype=dtype_name(case.dtype),
                shape=case.shape,
                impl=name,
                median_ms=t.median_ms,
                p20_ms=t.p20_ms,
                p80_ms=t.p80_ms,
                gb_s=rate,
                frac_of_copy=rate / ceiling if rate is not None and ceiling else None,
                tflop_s=flops / (t.median_ms * 1e-3) / 1e12 if flops else None,
                speedup_vs_eager=_ratio(timings.get(EAGER), t),
                speedup_vs_compile=_ratio(timings.get(COMPILE), t),
            )
        )
    return rows


def _ratio(base: Timing | None, t: Timing) -> float | None:
    return base.median_ms / t.median_ms if base is not None else None
