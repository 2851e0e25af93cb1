"""Cases and workloads: what a benchmark runs, as data.

A :class:`Case` is an op spec (sizes and variant, see :mod:`fusedops.benchmarking.cases`), a
dtype and the fused backend. ``case.build(device)`` allocates the inputs and returns a
:class:`Workload`: the implementations bound to those inputs (:data:`FUSED` under its backend,
:data:`EAGER` and :data:`COMPILE` baselines, op-specific extras), the minimum bytes or FLOPs of
one call, and ``check()``, the fused output against the reference
(:class:`~fusedops.benchmarking.accuracy.Accuracy`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

import fusedops
from fusedops.benchmarking.accuracy import Accuracy
from fusedops.benchmarking.timing import as_device

EAGER = "eager"
"""Name of the plain-PyTorch formula (the unpatched model for model cases): peer group ``eager``."""
COMPILE = "compile"
"""Name of ``torch.compile`` of the eager formula: peer group ``compile``."""
FUSED = "fusedops"
"""Name of the implementation under test (fusedops' kernel for the device)."""
DECODE: frozenset[str] = frozenset({"decode"})
"""Tags of a decode-size case: reported per call (small-call overhead) as well."""


class Mismatch(AssertionError):
    """The fused output differs from the reference: the benchmark must not time it."""


class Unavailable(RuntimeError):
    """The fused implementation cannot run here (the ``fusedops._C`` extension is not built).

    Runners skip (pytest) or report it with a hint (``bench/run.py --reference-only``). A
    backend that exists but fails is *not* ``Unavailable``: that error propagates.
    """


@dataclass(frozen=True)
class Impl:
    """One implementation of a workload, bound to its inputs.

    ``fn()`` runs one call and returns its output. ``context()`` is entered around the check,
    warm-up and timing of ``fn`` (e.g. ``fusedops.use_backend("cpp")``), so per-call Python
    overhead stays out of the loop. ``verify`` judges this implementation's output when it
    computes something other than the workload's op (e.g. the unquantized table next to an
    INT8 lookup); ``None``: the workload's ``verify``.
    """

    name: str
    fn: Callable[[], object]
    context: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext
    verify: Callable[[object], Accuracy] | None = None


@dataclass(frozen=True)
class Skipped:
    """A peer the workload could not bind: ``status`` is
    :data:`~fusedops.benchmarking.results.NOT_INSTALLED` or ``NOT_RUNNABLE`` and ``reason``
    says why (e.g. ``liger_kernel is not installed``, ``needs CUDA``)."""

    name: str
    status: str
    reason: str


@dataclass
class Workload:
    """Inputs of one case on one device, bound to implementations.

    Attributes:
        impls: implementations in report order.
        check: the fused output against the reference (run under the fused backend).
        verify: judges any implementation's output (what its ``fn()`` returned) against the
            reference; ``check()`` is ``verify`` of the fused output. ``None``: only the fused
            output can be checked (the peers are the reference itself, e.g. an unpatched model).
        min_bytes: minimum bytes one call moves (for GB/s), 0 if not memory-bound.
        flops: floating-point operations of one call, for compute-bound ops.
        note: one line for reports (e.g. the INT8 table's size against the fp32 one).
        skipped: peers that could not be bound here, with the reason.
    """

    impls: list[Impl]
    check: Callable[[], Accuracy]
    verify: Callable[[object], Accuracy] | None = None
    min_bytes: int = 0
    flops: int | None = None
    note: str = ""
    skipped: list[Skipped] = field(default_factory=list)


def backend_for(device: torch.device) -> str:
    """The fused backend benchmarked on ``device``: Triton on CUDA, C++ elsewhere."""
    return "triton" if device.type == "cuda" else "cpp"


class OpSpec:
    """Base of the op specs (frozen dataclasses in :mod:`fusedops.benchmarking.cases`).

    A spec names an op's variant and sizes (``name``, ``shape``) and builds its workload.
    ``compile=False`` leaves :data:`COMPILE` out (e.g. for cases run through Triton's
    interpreter).
    """

    op: ClassVar[str]
    extra_impls: ClassVar[tuple[str, ...]] = ()  # op-specific baselines, after FUSED
    # Peers bound only where they run (a package, CUDA, a dtype): listed in the workload's
    # ``skipped`` elsewhere.
    optional_impls: ClassVar[tuple[str, ...]] = ()
    name: str
    compile: bool

    @property
    def shape(self) -> str:
        raise NotImplementedError

    @property
    def axis(self) -> tuple[str, int, str]:
        """``(family, size, size_name)``: the shape without its swept size (one plotted line),
        the swept size (the x axis) and its unit."""
        return self.shape, 0, ""

    def default_backend(self, device: torch.device) -> str:
        return backend_for(device)

    def build(self, dtype: torch.dtype, device: torch.device, backend: str) -> Workload:
        raise NotImplementedError


@dataclass(frozen=True)
class Case:
    """A benchmark case as data: an op spec, a dtype, and the fused backend (``None``: the
    device's kernel). ``tags`` mark groups such as ``decode`` (per-call overhead)."""

    spec: OpSpec
    dtype: torch.dtype
    backend: str | None = None
    tags: frozenset[str] = frozenset()

    @property
    def op(self) -> str:
        return self.spec.op

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shape(self) -> str:
        return self.spec.shape

    @property
    def id(self) -> str:
        """Stable identifier usable in ``pytest -k`` and ``run.py -k``, e.g.
        ``embedding-learned-float32-B8-S1024-D768-V50257-P2048``."""
        shape = re.sub(r"[^A-Za-z0-9.]+", "-", self.shape.replace("=", ""))
        return f"{self.op}-{self.name}-{dtype_name(self.dtype)}-{shape}"

    @property
    def impl_names(self) -> tuple[str, ...]:
        """Names of the implementations the workload may time, in report order (the
        ``optional_impls`` only where they can run)."""
        names = (FUSED, *self.spec.extra_impls, *self.spec.optional_impls, EAGER)
        return (*names, COMPILE) if self.spec.compile else names

    def backend_on(self, device: torch.device | str) -> str:
        """The fused backend this case runs on ``device``."""
        return self.backend or self.spec.default_backend(as_device(device))

    def build(self, device: torch.device | str) -> Workload:
        """Allocate the inputs on ``device`` and bind the implementations."""
        dev = as_device(device)
        return self.spec.build(self.dtype, dev, self.backend_on(dev))


def require_extension(op_name: str | None = None) -> None:
    """Raise :class:`Unavailable` unless ``fusedops._C`` imports (and registers ``op_name``)."""
    try:
        import fusedops._C  # noqa: F401  (registers the extension's ops)
    except ImportError as exc:
        raise Unavailable(f"fusedops._C is not importable ({exc})") from None
    if op_name is not None and not hasattr(torch.ops.fusedops, op_name):
        raise Unavailable(f"fusedops._C has no {op_name} op (rebuild the extension)")


def backend_context(
    backend: str, *, extension_op: str | None = None
) -> Callable[[], AbstractContextManager[object]]:
    """``context()`` of the fused implementation: ``fusedops.use_backend(backend)``, after
    checking that the extension is built where the backend needs it."""

    def context() -> AbstractContextManager[object]:
        if backend == "cpp" or extension_op is not None:
            require_extension(extension_op)
        return fusedops.use_backend(backend)

    return context


def standard_impls(
    timed: Callable[[Callable[..., Any]], Callable[[], object]],
    fused: Callable[..., Any],
    eager: Callable[..., Any],
    *,
    context: Callable[[], AbstractContextManager[object]],
    compile: bool,
    extra: Sequence[Impl] = (),
) -> list[Impl]:
    """:data:`FUSED` (``timed(fused)`` inside ``context()``, see :func:`backend_context`), the
    ``extra`` baselines, :data:`EAGER` (``timed(eager)``) and, with ``compile``,
    :data:`COMPILE` (``timed(torch.compile(eager, dynamic=False))``, compiled on its first call).

    ``timed`` turns a function of the workload's inputs into the zero-argument call timed.
    """
    impls = [Impl(FUSED, timed(fused), context=context), *extra, Impl(EAGER, timed(eager))]
    if compile:
        impls.append(Impl(COMPILE, timed(torch.compile(eager, dynamic=False))))
    return impls


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def device_label(device: torch.device | str) -> str:
    """Short device description for reports: ``cpu`` or ``cuda (NVIDIA H100 ...)``."""
    dev = as_device(device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return dev.type


def case_impl_params(cases: Iterable[Case]) -> list[tuple[Case, str, str]]:
    """``(case, impl, test id)`` for every implementation of every case (pytest parametrize)."""
    return [(case, impl, f"{case.id}-{impl}") for case in cases for impl in case.impl_names]
