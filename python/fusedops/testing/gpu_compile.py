"""Ahead-of-time GPU compilation of Triton kernels on a machine without a GPU.

`compile_for_gpu` compiles one ``@triton.jit`` kernel for a real NVIDIA target with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``, assembles the PTX with the
ptxas shipped inside the triton wheel (``ptxas -v``) and returns a `GpuCompileReport`: registers,
spill bytes, stack frame, shared memory and counts of the PTX instructions that matter (128-bit
global loads/stores, ``mma.sync``, ``wgmma``, ``cp.async``). `compile_many` does the same for a
list of `CompileJob` in parallel worker processes.

Interpreter mode. Triton decides at *decoration* time whether ``@triton.jit`` builds a real
``JITFunction`` or an interpreter ``InterpretedFunction``; the latter cannot be compiled, and
neither can any ``@triton.jit`` helper it calls (they are interpreter objects in the module's
globals too). When the kernel given here is a real ``JITFunction`` it is compiled in this process.
Otherwise the kernel is named by module and qualified name and compiled in a worker subprocess
started with ``TRITON_INTERPRET`` removed from its environment, which imports the kernel's module
afresh, so the kernel, its helpers and its ``tl.constexpr`` globals are all compiled-mode objects.
Such kernels must therefore be importable module-level objects (a script's ``__main__`` module is
loaded from its file under another name, so its ``if __name__ == "__main__"`` block does not run).

Caching. Results are cached on disk, keyed on a fingerprint of the kernel source (including the
``@triton.jit`` helpers and ``tl.constexpr`` globals it uses), the signature, constexprs, arch,
warps, stages, divisibility hints and the triton version, under ``$FUSEDOPS_COMPILE_CACHE`` or
``<sys.prefix>/fusedops-compile-cache``. Triton's own cache goes to ``$TRITON_CACHE_DIR``, or
``<sys.prefix>/triton-cache`` when that is unset (never ``$HOME``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from fusedops.testing._compile_cache import _cache_key, _cache_load, _cache_store, compile_cache_dir
from fusedops.testing._compile_worker import _get_pool
from fusedops.testing._errors import GpuCompileError, _exception_text
from fusedops.testing._kernel_source import _jit_function, _kernel_ref, _python_function
from fusedops.testing._ptx import count_ptx_instructions
from fusedops.testing._triton_compile import _compile_facts, _make_spec, _Spec

__all__ = [
    "CompileJob",
    "GpuCompileError",
    "GpuCompileReport",
    "compile_cache_dir",
    "compile_for_gpu",
    "compile_many",
    "count_ptx_instructions",
]


# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GpuCompileReport:
    """What the compiler and ptxas made of one kernel configuration.

    ``counts`` maps instruction classes to their number of occurrences in the PTX (static count,
    not executed count); see `count_ptx_instructions` for the keys. ``shared_bytes`` is the
    static shared memory Triton allocates for the kernel (``metadata.shared``).
    """

    kernel_name: str
    arch: int
    num_warps: int
    num_stages: int
    constexprs: dict[str, Any]
    registers: int
    spill_stores: int
    spill_loads: int
    stack_frame: int
    shared_bytes: int
    counts: dict[str, int]
    divisible: tuple[str, ...] = ()
    ptx_version: str = ""
    compile_seconds: float = 0.0
    cached: bool = False
    ptx: str = dataclasses.field(default="", repr=False)
    ptxas_log: str = dataclasses.field(default="", repr=False)

    def summary(self) -> str:
        """One line: config, registers, spills, stack, shared memory and key instruction counts."""
        cfg = ",".join(f"{k}={v}" for k, v in self.constexprs.items())
        c = self.counts
        source = "cached" if self.cached else f"{self.compile_seconds:.2f}s"
        return (
            f"{self.kernel_name}[{cfg}] sm_{self.arch} w{self.num_warps} s{self.num_stages}: "
            f"{self.registers} regs, spill {self.spill_stores}/{self.spill_loads} B, "
            f"stack {self.stack_frame} B, smem {self.shared_bytes} B, "
            f"ld.v4 {c.get('ld.global.v4', 0)}, st.v4 {c.get('st.global.v4', 0)}, "
            f"ld.scalar {c.get('ld.global.scalar', 0)}, mma.sync {c.get('mma.sync', 0)}, "
            f"wgmma {c.get('wgmma', 0)}, cp.async {c.get('cp.async', 0)} ({source})"
        )

    def assert_clean(
        self,
        *,
        require_v4_loads: bool = False,
        require_v4_stores: bool = False,
        require_mma: bool | str = False,
        max_registers: int | None = None,
    ) -> None:
        """Raise AssertionError unless the kernel has no spills and no stack frame.

        Args:
            require_v4_loads: also require at least one 128-bit global load (``ld.global.v4``).
            require_v4_stores: also require at least one 128-bit global store.
            require_mma: True requires ``mma.sync`` or ``wgmma``; a string names the exact
                `counts` key required (``"wgmma"``, ``"mma.sync"``, ``"cp.async"``, ...).
            max_registers: also require at most this many registers per thread.
        """
        problems: list[str] = []
        if self.spill_stores or self.spill_loads:
            problems.append(
                f"register spills ({self.spill_stores} B stored, {self.spill_loads} B loaded): "
                "reduce the block size or raise num_warps"
            )
        if self.stack_frame:
            problems.append(f"{self.stack_frame} B stack frame (local memory)")
        if max_registers is not None and self.registers > max_registers:
            problems.append(f"{self.registers} registers > {max_registers}")
        if require_v4_loads and not self.counts.get("ld.global.v4", 0):
            problems.append(
                "no 128-bit global loads (ld.global.v4): pass the pointers and row strides in "
                f"divisible=... (now {self.divisible!r}), also the bounds used in masks, and "
                "give each thread >= 16 contiguous bytes; loads pipelined through shared memory "
                f"show up as cp.async instead ({self.counts.get('cp.async', 0)} here)"
            )
        if require_v4_stores and not self.counts.get("st.global.v4", 0):
            problems.append(
                f"no 128-bit global stores (st.global.v4); divisible={self.divisible!r}"
            )
        if require_mma:
            if isinstance(require_mma, str):
                if not self.counts.get(require_mma, 0):
                    problems.append(f"no {require_mma} instructions")
            elif not (self.counts.get("mma.sync", 0) or self.counts.get("wgmma", 0)):
                problems.append("no tensor-core instructions (mma.sync / wgmma)")
        if problems:
            raise AssertionError(
                "GPU compile check failed for "
                + self.summary()
                + "\n  - "
                + "\n  - ".join(problems)
            )


@dataclasses.dataclass
class CompileJob:
    """One kernel configuration for `compile_many` (arguments as for `compile_for_gpu`)."""

    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    arch: int
    num_warps: int = 4
    num_stages: int = 2
    divisible: tuple[str, ...] = ()
    fp_fusion: bool = True


def _report(spec: _Spec, facts: Mapping[str, Any], cached: bool) -> GpuCompileReport:
    return GpuCompileReport(
        kernel_name=facts["kernel_name"],
        arch=spec.arch,
        num_warps=spec.num_warps,
        num_stages=spec.num_stages,
        constexprs=dict(spec.constexprs),
        registers=facts["registers"],
        spill_stores=facts["spill_stores"],
        spill_loads=facts["spill_loads"],
        stack_frame=facts["stack_frame"],
        shared_bytes=facts["shared_bytes"],
        counts=dict(facts["counts"]),
        divisible=spec.divisible,
        ptx_version=facts["ptx_version"],
        compile_seconds=facts["compile_seconds"],
        cached=cached,
        ptx=facts["ptx"],
        ptxas_log=facts["ptxas_log"],
    )


# --------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------


def _compile_uncached(kernel: Any, spec: _Spec) -> dict[str, Any]:
    jit_fn = _jit_function(kernel)
    if jit_fn is not None:
        try:
            return _compile_facts(jit_fn, spec)
        except GpuCompileError:
            raise
        except Exception as exc:
            raise GpuCompileError(f"{jit_fn.__name__} {spec}: {_exception_text(exc)}") from exc
    ref = _kernel_ref(kernel)
    if ref is None:
        raise GpuCompileError(
            f"{_python_function(kernel).__qualname__} was decorated in interpreter mode and is "
            "not a module-level object, so it cannot be re-imported in compiled mode; define "
            "it at module level"
        )
    return _get_pool(1).submit(ref, spec).result()


def compile_for_gpu(
    kernel: Any,
    signature: dict[str, str],
    constexprs: dict[str, object],
    arch: int,
    *,
    num_warps: int = 4,
    num_stages: int = 2,
    divisible: tuple[str, ...] = (),
    fp_fusion: bool = True,
    use_cache: bool = True,
) -> GpuCompileReport:
    """Compile a ``@triton.jit`` kernel for ``sm_<arch>`` and report what ptxas made of it.

    Args:
        kernel: the kernel as decorated (JITFunction, InterpretedFunction, or an autotune /
            heuristics wrapper of either).
        signature: every parameter in order -> Triton type string (``"*fp16"``, ``"i32"``,
            ``"i64"``, ``"fp32"``, ``"constexpr"``). An int that Triton would specialise at
            launch (a stride of 1) is given as ``"constexpr"`` with its value.
        constexprs: value of every ``"constexpr"`` parameter.
        arch: compute capability as an int, e.g. 80 (A100) or 90 (H100, assembled as sm_90a).
        num_warps, num_stages: launch options, as in a real launch.
        divisible: pointer / integer parameters that get the ``tt.divisibility=16`` hint (what
            the launcher infers for 16-byte aligned pointers and multiples of 16); needed for
            128-bit vector loads and stores.
        fp_fusion: allow FMA contraction (Triton's launch default).
        use_cache: read and write the on-disk results cache.

    Returns:
        GpuCompileReport. Raises GpuCompileError if Triton or ptxas fails.
    """
    spec = _make_spec(
        kernel, signature, constexprs, arch, num_warps, num_stages, divisible, fp_fusion
    )
    key = _cache_key(kernel, spec) if use_cache else ""
    if use_cache and (facts := _cache_load(key)) is not None:
        return _report(spec, facts, cached=True)
    facts = _compile_uncached(kernel, spec)
    if use_cache:
        _cache_store(key, facts)
    return _report(spec, facts, cached=False)


def compile_many(
    jobs: Sequence[CompileJob | Mapping[str, Any]],
    processes: int | None = None,
    *,
    use_cache: bool = True,
) -> list[GpuCompileReport]:
    """Compile many kernel configurations in parallel; reports come back in job order.

    Cached results are returned without compiling. Misses are compiled by up to ``processes``
    worker subprocesses (default: ``$FUSEDOPS_COMPILE_PROCS`` or the CPU count); kernels that
    cannot be re-imported by name (defined inside a function) are compiled in this process.
    Every job is attempted; if any fail, one GpuCompileError lists them all.

    Args:
        jobs: `CompileJob` instances, or mappings with the keyword arguments of
            `compile_for_gpu` (``kernel``, ``signature``, ``constexprs``, ``arch``, ...).
        processes: worker count; 1 compiles in this process where the kernel allows it.
        use_cache: read and write the on-disk results cache.
    """
    norm = [j if isinstance(j, CompileJob) else CompileJob(**j) for j in jobs]
    specs = [
        _make_spec(
            j.kernel,
            j.signature,
            j.constexprs,
            j.arch,
            j.num_warps,
            j.num_stages,
            j.divisible,
            j.fp_fusion,
        )
        for j in norm
    ]
    keys = [_cache_key(j.kernel, s) if use_cache else "" for j, s in zip(norm, specs, strict=True)]
    reports: list[GpuCompileReport | None] = [None] * len(norm)
    misses: list[int] = []
    for i, (spec, key) in enumerate(zip(specs, keys, strict=True)):
        facts = _cache_load(key) if use_cache else None
        if facts is None:
            misses.append(i)
        else:
            reports[i] = _report(spec, facts, cached=True)

    if processes is None:
        processes = int(os.environ.get("FUSEDOPS_COMPILE_PROCS", "0")) or os.cpu_count() or 1
    processes = max(1, min(processes, len(misses)))
    errors: list[str] = []

    def finish(i: int, get: Callable[[], dict[str, Any]]) -> None:
        try:
            facts = get()
        except GpuCompileError as exc:
            errors.append(_exception_text(exc))
            return
        if use_cache:
            _cache_store(keys[i], facts)
        reports[i] = _report(specs[i], facts, cached=False)

    pending: list[tuple[int, Future[dict[str, Any]]]] = []
    local: list[int] = []
    for i in misses:
        ref = _kernel_ref(norm[i].kernel)
        in_process = _jit_function(norm[i].kernel) is not None
        if in_process and (processes == 1 or ref is None):
            local.append(i)
        elif ref is not None:
            pending.append((i, _get_pool(processes).submit(ref, specs[i])))
        else:
            local.append(i)  # raises the "not module-level" error through _compile_uncached
    for i in local:
        finish(i, lambda i=i: _compile_uncached(norm[i].kernel, specs[i]))
    for i, fut in pending:
        finish(i, fut.result)
    if errors:
        raise GpuCompileError(
            f"{len(errors)} of {len(norm)} GPU compile jobs failed:\n\n" + "\n\n".join(errors)
        )
    return [r for r in reports if r is not None]
