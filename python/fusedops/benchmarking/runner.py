"""Running a case: check every implementation against the reference, then time the ones that
pass (:func:`run_case`); one :class:`~fusedops.benchmarking.results.Record` per implementation.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

from fusedops.benchmarking.accuracy import Accuracy
from fusedops.benchmarking.ceilings import Ceilings
from fusedops.benchmarking.harness import FUSED, Case, Impl, Mismatch, Workload, dtype_name
from fusedops.benchmarking.peers import PeerUnavailable, peer_group
from fusedops.benchmarking.results import (
    ERROR,
    MISMATCH,
    NOT_RUNNABLE,
    OK,
    Record,
    error_text,
)
from fusedops.benchmarking.timing import Timing, as_device, gbs, measure

NOISY_SPREAD = 1.15
"""A timing whose ``p80 / p20`` exceeds this is rerun once, and flagged ``noisy`` if the rerun
is no better."""


@dataclass(frozen=True)
class TimingPlan:
    """How long each implementation is warmed and timed (ms), as ``triton.testing.do_bench``'s
    ``warmup`` and ``rep``. The count of timed calls is clamped to ``[min_reps, max_reps]``."""

    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 5
    max_reps: int = 10_000


def check_case(case: Case, workload: Workload) -> Accuracy:
    """``workload.check()``; raises :class:`Mismatch` naming the case when it fails."""
    accuracy = workload.check()
    if not accuracy.ok:
        raise Mismatch(f"fusedops {case.id} differs from the reference: {accuracy.detail}")
    return accuracy


def spread(timing: Timing) -> float:
    """``p80 / p20`` of a timing (1.0 for a zero p20)."""
    return timing.p80_ms / timing.p20_ms if timing.p20_ms > 0 else 1.0


def time_impl(impl: Impl, device: torch.device, plan: TimingPlan) -> tuple[Timing, bool]:
    """Time ``impl`` (already called once) inside its context; rerun once when the spread
    exceeds :data:`NOISY_SPREAD` and keep the tighter of the two. Returns ``(timing, noisy)``."""

    def once() -> Timing:
        with impl.context():
            return measure(
                impl.fn, device=device, warmup_time=plan.warmup_ms / 1e3,
                min_time=plan.rep_ms / 1e3, min_reps=plan.min_reps, max_reps=plan.max_reps,
            )  # fmt: skip

    timing = once()
    if spread(timing) > NOISY_SPREAD:
        rerun = once()
        timing = min(timing, rerun, key=spread)
    return timing, spread(timing) > NOISY_SPREAD


def _failure_status(exc: BaseException) -> tuple[str, str]:
    """Status and one-line detail of a peer that raised."""
    if isinstance(exc, PeerUnavailable):
        return exc.status, exc.reason
    if isinstance(exc, torch.OutOfMemoryError):
        return ERROR, "out of memory"
    if "No available kernel" in str(exc):  # a forced SDPA backend that cannot take the case
        return NOT_RUNNABLE, "no kernel of this SDPA backend takes these inputs"
    return ERROR, error_text(exc)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(
    case: Case,
    device: torch.device | str,
    *,
    ceilings: Ceilings,
    plan: TimingPlan = TimingPlan(),
    peers: Collection[str] | None = None,
    op: str | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Record]:
    """Build ``case`` on ``device``, check every implementation, time those that pass.

    fusedops is checked with ``workload.check()``; each peer's first output (its first call,
    where ``torch.compile`` and autotuning happen) with its ``verify`` or the workload's. A
    failing check gives a ``mismatch`` record and no timing; a peer that cannot be bound or
    raises gives a ``not installed`` / ``not runnable`` / ``error`` record (fusedops raising
    propagates: it is the code under test). Timing is :func:`time_impl`.

    Args:
        case: what to run.
        device: where.
        ceilings: the device's measured ceilings (copy GB/s; matmul TFLOP/s of the case's dtype
            for FLOP-counted cases).
        plan: warm-up and timing budget per implementation.
        peers: peer groups to run (:data:`~fusedops.benchmarking.peers.PEER_GROUPS`); ``None``:
            all of them.
        op: the records' ``op`` (a sweep's op name); default ``case.op``.
        log: progress callback (one line per step).
    Returns:
        One record per implementation, fusedops first, then the peers in the workload's order,
        then the peers that could not be bound.
    """
    dev = as_device(device)
    workload = case.build(dev)

    def wanted(name: str) -> bool:
        return name == FUSED or peers is None or peer_group(name) in peers

    family, size, size_name = case.spec.axis
    base = {
        "op": op or case.op,
        "case": case.name,
        "family": family,
        "size": size,
        "size_name": size_name,
        "shape": case.shape,
        "dtype": dtype_name(case.dtype),
    }
    records: list[Record] = []
    timings: dict[str, Timing] = {}
    for impl in workload.impls:
        if not wanted(impl.name):
            continue
        record = Record(**base, impl=impl.name)
        if impl.name == FUSED:
            record.backend = case.backend_on(dev)
        records.append(record)
        try:
            accuracy = _first_call_check(impl, workload, dev)
        except Exception as exc:
            if impl.name == FUSED:
                raise
            record.status, record.detail = _failure_status(exc)
            continue
        if accuracy is None:
            record.detail = "not checked: it is the reference"
        else:
            record.detail, record.max_err = accuracy.detail, accuracy.max_err
            if impl.name == FUSED and workload.note:
                record.detail += f"; {workload.note}"
            if not accuracy.ok:
                record.status = MISMATCH
                if impl.name == FUSED:
                    break  # a wrong fused output: nothing of this case is timed
                continue
        try:
            timing, record.noisy = time_impl(impl, dev, plan)
        except Exception as exc:
            if impl.name == FUSED:
                raise
            record.status, record.detail = _failure_status(exc)
            continue
        timings[impl.name] = timing
        _fill_rates(record, timing, workload, case.dtype, ceilings)
        if log is not None:
            log(f"{case.id} {impl.name}: {timing.median_ms:.4g} ms")
    records += [
        Record(**base, impl=s.name, status=s.status, detail=s.reason)
        for s in workload.skipped
        if wanted(s.name)
    ]
    for record in records:
        if record.impl in timings:
            mine = timings[record.impl].median_ms
            record.speedup = {
                name: t.median_ms / mine for name, t in timings.items() if name != record.impl
            }
    del workload
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return records


def _first_call_check(impl: Impl, workload: Workload, device: torch.device) -> Accuracy | None:
    """Call ``impl`` once (untimed: compiles and autotunes) and judge its output; ``None`` when
    nothing can judge it (a peer that is the reference itself)."""
    with impl.context():
        output = impl.fn()
        _sync(device)
    if impl.name == FUSED:
        del output
        return workload.check()
    verify = impl.verify or workload.verify
    return None if verify is None else verify(output)


def _fill_rates(
    record: Record, timing: Timing, workload: Workload, dtype: torch.dtype, ceilings: Ceilings
) -> None:
    record.median_ms, record.p20_ms, record.p80_ms = timing.median_ms, timing.p20_ms, timing.p80_ms
    record.reps = timing.reps
    record.status = OK
    seconds = timing.median_ms * 1e-3
    if workload.flops:
        record.tflop_s = workload.flops / seconds / 1e12
        record.ceiling, record.ceiling_value = ceilings.for_rate(dtype, flops=True)
        record.frac_of_ceiling = record.tflop_s / record.ceiling_value
    elif workload.min_bytes:
        record.gb_s = gbs(workload.min_bytes, timing.median_ms)
        record.ceiling, record.ceiling_value = ceilings.for_rate(dtype, flops=False)
        record.frac_of_ceiling = record.gb_s / record.ceiling_value
