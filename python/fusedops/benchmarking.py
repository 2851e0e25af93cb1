"""Shared benchmark harness: timing, byte counting, bandwidth ceilings, result rows and tables.

Used by ``bench/run.py`` (one-process CSV run), the pytest-benchmark suites in ``bench/`` and
the demo. Benchmarks report ratios, not absolute times (see DESIGN.md, "Numbers that matter"):

* achieved GB/s of a memory-bound op = :func:`min_bytes_embedding` (the minimum traffic) divided
  by the median time, as a fraction of :func:`copy_bandwidth_gbs` (the device's measured copy
  ceiling);
* speedups against the eager reference and ``torch.compile`` of the reference, timed in the
  same process on the same inputs.

A benchmark is described as data: a :class:`Case` (what to run, at what size and dtype) builds a
:class:`Workload` (inputs bound to implementations) on a device; :func:`run_case` checks the
fused output against the reference, times every implementation and returns :class:`Row` s.
Suites keep a list of cases per op (``CASES`` in ``bench/bench_<op>.py``).

Timing (:func:`measure`): CUDA uses CUDA events around each call (one synchronize at the end)
and by default zeroes a 256 MiB buffer between calls so every call starts with a cold L2; CPU
uses ``time.perf_counter`` around each call with the garbage collector paused. CPU caches are
not flushed: the large cases exceed the last-level cache anyway, and small ones (e.g. 128 tokens)
run from cache, so their fraction of the copy ceiling can exceed 1. Compilation, Triton
autotuning and first-touch allocation never land inside the timed loop: :func:`run_case` calls
each implementation once before timing and ``measure`` adds its own warm-up calls.
:func:`run_case` interleaves the implementations over a few rounds and pools the samples, so
drift on a shared machine hits them alike.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gc
import math
import re
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = [
    "COMPILE",
    "EAGER",
    "FUSED",
    "Case",
    "Impl",
    "Mismatch",
    "Row",
    "Timing",
    "Unavailable",
    "Workload",
    "copy_bandwidth_gbs",
    "device_label",
    "dtype_name",
    "format_table",
    "gbs",
    "measure",
    "min_bytes_embedding",
    "min_bytes_embedding_backward",
    "run_case",
    "write_csv",
]

EAGER = "eager"
"""Name of the eager-reference implementation: the baseline of ``speedup_vs_eager``."""
COMPILE = "compile"
"""Name of the ``torch.compile(reference)`` implementation: baseline of ``speedup_vs_compile``."""
FUSED = "fusedops"
"""Name of the implementation under test (fusedops' kernel for the device)."""

_L2_FLUSH_BYTES = 256 * 2**20


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


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


def _as_device(device: torch.device | str) -> torch.device:
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
) -> Timing:
    """Time ``fn()`` call by call and summarise (median, p20, p80 in ms).

    Args:
        fn: zero-argument callable; its result is discarded. It must already be compiled /
            autotuned (call it once before ``measure``): warm-up calls are not meant to absorb
            a 30 s ``torch.compile``.
        device: where ``fn`` runs. ``cuda`` devices are timed with CUDA events (one
            ``synchronize`` after the loop); others with ``time.perf_counter`` per call.
        warmup: untimed calls first. With ``min_time``, they also estimate the per-call time.
        reps: exact number of timed calls. Give either ``reps`` or ``min_time``
            (default: ``min_time=0.5``).
        min_time: seconds of timed calls to aim for; the count is clamped to
            ``[min_reps, max_reps]``.
        flush_l2: zero a 256 MiB buffer before each call (outside the timed window) so no call
            hits in L2. Default: on for CUDA, off for CPU.
    Returns:
        :class:`Timing` of the timed calls.
    """
    dev = _as_device(device)
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
    for _ in range(warmup):
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


# --------------------------------------------------------------------------------------------
# Bytes and bandwidth
# --------------------------------------------------------------------------------------------


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
    dev = _as_device(device)
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


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


def min_bytes_embedding(
    num_tokens: int,
    dim: int,
    *,
    dtype: torch.dtype,
    id_dtype: torch.dtype = torch.int64,
    pos_rows: int = 0,
    positions_dtype: torch.dtype | None = None,
    out_dtype: torch.dtype | None = None,
) -> int:
    """Minimum bytes a fused embedding forward must move.

    Convention (the kernel's unavoidable traffic, every byte counted once):

    * ids: ``num_tokens`` ids read once;
    * token rows: one ``[D]`` row of ``weight`` read **per token**, repeated ids included (the
      gather reads a row for every token; rows are not assumed to stay in cache);
    * positional table: ``pos_rows`` distinct ``[D]`` rows read once each (e.g. ``S`` rows for
      default positions ``0..S-1``, shared by the whole batch); 0 for a sinusoid computed in the
      kernel or no positional term;
    * explicit ``positions`` tensor, if given (``positions_dtype``): ``num_tokens`` ids read once;
    * output: ``num_tokens x D`` written once in ``out_dtype`` (default ``dtype``).

    Args:
        num_tokens: ``N`` = number of ids (``B * S``).
        dim: embedding dim ``D``.
        dtype: dtype of ``weight`` (and of the positional table).
        id_dtype: dtype of ``input_ids``.
        pos_rows: distinct positional-table rows read.
        positions_dtype: dtype of an explicit positions tensor; ``None`` when positions are
            implicit (``position_offset + s``).
        out_dtype: output dtype; defaults to ``dtype``.
    Returns:
        Byte count (int).
    """
    item = _itemsize(dtype)
    total = num_tokens * _itemsize(id_dtype)  # ids
    total += num_tokens * dim * item  # gathered token rows
    total += pos_rows * dim * item  # positional rows
    if positions_dtype is not None:
        total += num_tokens * _itemsize(positions_dtype)  # explicit positions
    total += num_tokens * dim * _itemsize(out_dtype or dtype)  # output
    return total


def min_bytes_embedding_backward(
    num_tokens: int,
    dim: int,
    num_rows: int,
    *,
    dtype: torch.dtype,
    id_dtype: torch.dtype = torch.int64,
) -> int:
    """Minimum bytes of the embedding backward producing a dense ``[V, D]`` weight gradient.

    Convention: ``grad_out`` ``[N, D]`` read once, ids read once, and the whole gradient table
    ``[num_rows, D]`` written once (rows no token hits must still be written as zeros).
    """
    item = _itemsize(dtype)
    return num_tokens * dim * item + num_tokens * _itemsize(id_dtype) + num_rows * dim * item


# --------------------------------------------------------------------------------------------
# Cases and workloads
# --------------------------------------------------------------------------------------------


class Mismatch(AssertionError):
    """The fused output differs from the reference: the benchmark must not time it."""


class Unavailable(RuntimeError):
    """An implementation cannot run in this environment (e.g. the fusedops API is not built).

    Raised by an :class:`Impl` or a workload ``check``; runners either skip (pytest) or report
    it with a hint (``bench/run.py --reference-only``). A backend that exists but fails is *not*
    ``Unavailable``: that error propagates.
    """


@dataclass(frozen=True)
class Impl:
    """One implementation of a workload, bound to its inputs.

    ``fn()`` runs one call. ``context()`` is entered around the warm-up and timing of ``fn`` (e.g.
    ``fusedops.use_backend("cpp")``), so per-call Python overhead stays out of the loop.
    """

    name: str
    fn: Callable[[], object]
    context: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext


@dataclass
class Workload:
    """Inputs of one case on one device, bound to implementations.

    Attributes:
        impls: implementations in report order; :data:`EAGER` and :data:`COMPILE` name the
            baselines.
        min_bytes: minimum bytes one call moves (for GB/s), or 0 if not memory-bound.
        flops: floating-point operations of one call, for compute-bound ops (or ``None``).
        check: raises :class:`Mismatch` when the fused implementation disagrees with the
            reference; :func:`run_case` calls it before timing anything.
    """

    impls: list[Impl]
    min_bytes: int
    check: Callable[[], None] = lambda: None
    flops: int | None = None


@dataclass(frozen=True)
class Case:
    """A benchmark case as data: which op, what variant, what shape and dtype.

    ``build(device)`` allocates the inputs and returns the :class:`Workload`; keep allocation
    there (not at import) so collecting a suite is cheap.
    """

    op: str
    name: str
    dtype: torch.dtype
    shape: str
    build: Callable[[torch.device], Workload] = field(repr=False, compare=False)
    tags: frozenset[str] = frozenset()

    @property
    def id(self) -> str:
        """Stable identifier usable in ``pytest -k`` and ``run.py -k``, e.g.
        ``embedding-learned-float32-B8-S1024-D768-V50257-P2048``."""
        shape = re.sub(r"[^A-Za-z0-9.]+", "-", self.shape.replace("=", ""))
        return f"{self.op}-{self.name}-{dtype_name(self.dtype)}-{shape}"


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------
# Rows, CSV and tables
# --------------------------------------------------------------------------------------------


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

    Unless :data:`FUSED` is in ``skip``, the workload's ``check`` runs first and any
    :class:`Mismatch` propagates (nothing is timed). Each implementation is then called once
    untimed (``torch.compile`` and Triton autotuning happen here). Timing is interleaved:
    ``rounds`` rounds, each calling :func:`measure` once per implementation for
    ``min_time / rounds`` seconds, so slow drift of a shared machine hits all implementations
    alike; the samples of all rounds are pooled. Speedups are ``baseline median / median``.

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
    dev = _as_device(device)
    skipped = set(skip)
    workload = case.build(dev)
    if FUSED not in skipped:
        workload.check()
    ceiling = copy_bandwidth_gbs(dev) if workload.min_bytes else None
    impls = [impl for impl in workload.impls if impl.name not in skipped]
    for impl in impls:
        with impl.context():
            t0 = time.perf_counter()
            impl.fn()  # compile / autotune / first touch, untimed
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
        if log is not None:
            log(f"  {case.id} {impl.name}: first call {time.perf_counter() - t0:.2f} s")
    timings: dict[str, Timing] = {}
    for _ in range(max(1, rounds)):
        for impl in impls:
            with impl.context():
                t = measure(
                    impl.fn, device=dev, warmup=warmup, min_time=min_time / rounds, min_reps=2
                )
            timings[impl.name] = timings[impl.name].merged(t) if impl.name in timings else t
    if log is not None:
        summary = ", ".join(f"{k} {t.median_ms:.3f} ms ({t.reps} reps)" for k, t in timings.items())
        log(f"  {case.id}: {summary}")
    min_bytes, flops = workload.min_bytes, workload.flops
    del workload
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


def device_label(device: torch.device | str) -> str:
    """Short device description for reports: ``cpu`` or ``cuda (NVIDIA H100 ...)``."""
    dev = _as_device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return dev.type


def write_csv(rows: Sequence[Row], path: str | Path) -> None:
    """Write rows as CSV with a header of :class:`Row`'s field names (floats to 4 sig. digits,
    empty cells for values that do not apply). Parent folders are created."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = [f.name for f in dataclasses.fields(Row)]
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in rows:
            writer.writerow([_csv_cell(getattr(row, n)) for n in names])


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_TABLE_COLUMNS: tuple[tuple[str, str, Callable[[Row], str]], ...] = (
    ("op", "<", lambda r: r.op),
    ("case", "<", lambda r: r.case),
    ("dtype", "<", lambda r: r.dtype),
    ("shape", "<", lambda r: r.shape),
    ("impl", "<", lambda r: r.impl),
    ("median ms", ">", lambda r: f"{r.median_ms:.3f}"),
    ("p20-p80 ms", ">", lambda r: f"{r.p20_ms:.3f}-{r.p80_ms:.3f}"),
    ("GB/s", ">", lambda r: _fmt(r.gb_s, "{:.1f}")),
    ("of copy", ">", lambda r: _fmt(r.frac_of_copy, "{:.0%}")),
    ("TFLOP/s", ">", lambda r: _fmt(r.tflop_s, "{:.1f}")),
    ("vs eager", ">", lambda r: _fmt(r.speedup_vs_eager, "{:.2f}x")),
    ("vs compile", ">", lambda r: _fmt(r.speedup_vs_compile, "{:.2f}x")),
)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def format_table(rows: Sequence[Row], *, title: str | None = None) -> str:
    """Plain-text table of ``rows`` (aligned columns; columns that are empty everywhere, such as
    TFLOP/s for memory-bound ops, are dropped). A blank line separates cases."""
    columns = [
        col for col in _TABLE_COLUMNS if any(col[2](r) != "-" for r in rows) or col[0] == "impl"
    ]
    cells = [[col[2](r) for col in columns] for r in rows]
    header = [col[0] for col in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        parts = [f"{v:{col[1]}{w}}" for v, col, w in zip(values, columns, widths, strict=True)]
        return "  ".join(parts).rstrip()

    out = []
    if title:
        out.append(title)
    out.append(line(header))
    out.append("  ".join("-" * w for w in widths))
    previous: tuple[str, ...] | None = None
    for row, cell in zip(rows, cells, strict=True):
        key = (row.op, row.case, row.dtype, row.shape)
        if previous is not None and key != previous:
            out.append("")
        previous = key
        out.append(line(cell))
    return "\n".join(out)


def case_impl_params(
    cases: Iterable[Case], impls: Sequence[str] = (FUSED, EAGER, COMPILE)
) -> list[tuple[Case, str, str]]:
    """``(case, impl, test id)`` for every implementation of every case, for
    ``pytest.mark.parametrize`` in the bench suites; cases tagged ``no-compile`` skip
    :data:`COMPILE`."""
    return [
        (case, impl, f"{case.id}-{impl}")
        for case in cases
        for impl in impls
        if not (impl == COMPILE and "no-compile" in case.tags)
    ]
