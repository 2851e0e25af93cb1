"""Ahead-of-time GPU compilation of Triton kernels on a machine without a GPU.

`compile_for_gpu` compiles one ``@triton.jit`` kernel for a real NVIDIA target with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))``, assembles the PTX with the
ptxas shipped inside the triton wheel (``ptxas -v``) and returns a `GpuCompileReport`: registers,
spill bytes, stack frame, shared memory, counts of the PTX instructions that matter (128-bit
global loads/stores, ``mma.sync``, ``wgmma``, ``cp.async``) and the PTX itself. `compile_many`
does the same for a list of `CompileJob` in parallel worker processes; `prefetch` starts such
a list in the background.

Interpreter mode. Triton decides at *decoration* time whether ``@triton.jit`` builds a real
``JITFunction`` or an interpreter ``InterpretedFunction``; the latter cannot be compiled, and
neither can any ``@triton.jit`` helper it calls. A real ``JITFunction`` is compiled in this
process when one worker is asked for; otherwise the kernel is named by module and qualified name
and compiled in a worker subprocess started without ``TRITON_INTERPRET``, which imports the
kernel's module afresh, so the kernel, its helpers and its ``tl.constexpr`` globals are all
compiled-mode objects. Such kernels must be importable module-level objects (a script's
``__main__`` is loaded from its file under another name, so its ``__main__`` block does not run).

Caching. Results are cached on disk under ``fusedops.caches.cache_dir("FUSEDOPS_COMPILE_CACHE")``,
keyed on a fingerprint of the kernel source (with the ``@triton.jit`` helpers and
``tl.constexpr`` globals it uses), the signature, constexprs, arch, warps, stages, divisibility
hints and the triton version; identical jobs (within a call, or still compiling from an earlier
call) are compiled once. Triton's own cache goes to ``cache_dir("TRITON_CACHE_DIR")``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from fusedops.testing.compiler import (
    CompileSpec,
    cache_key,
    compile_facts,
    compile_triton_dir,
    exception_text,
    fingerprint,
    jit_function,
    kernel_ref,
    load_cached,
    make_spec,
    python_function,
    store_cached,
)
from fusedops.testing.ptx import GpuCompileError, offset_products
from fusedops.testing.workers import compile_pool

__all__ = [
    "CompileJob",
    "GpuCompileReport",
    "assert_compiled_clean",
    "assert_same_figures",
    "compile_families",
    "compile_for_gpu",
    "compile_many",
    "prefetch",
    "report_compiles",
    "with_dtype_twins",
]


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
    signature: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
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

    @property
    def register_limit(self) -> int:
        """Registers a thread may use before ptxas spills: 255, or less where the block's
        threads (``.maxntid`` = 32 x warps) would overflow the 64K register file."""
        return min(255, 65536 // (32 * self.num_warps) // 8 * 8)

    def figures(self) -> dict[str, Any]:
        """The dtype-independent facts two compiles of one config are compared on."""
        return {
            "registers": self.registers,
            "spill_stores": self.spill_stores,
            "spill_loads": self.spill_loads,
            "stack_frame": self.stack_frame,
            "shared_bytes": self.shared_bytes,
            "counts": self.counts,
        }

    def offset_products(self, params: Sequence[str]) -> dict[str, list[str]]:
        """`fusedops.testing.ptx.offset_products` for integer parameters named as in the
        signature; constexpr ones (values Triton specialised, e.g. a stride of 1) map to []."""
        runtime = [name for name, kind in self.signature.items() if kind != "constexpr"]
        unknown = [p for p in params if p not in self.signature]
        if unknown:
            raise ValueError(f"{self.kernel_name}: no parameters {unknown} in the signature")
        found = offset_products(self.ptx, {p: runtime.index(p) for p in params if p in runtime})
        return {p: found.get(p, []) for p in params}

    def assert_clean(
        self,
        *,
        require_v4_loads: bool = False,
        require_v4_stores: bool = False,
        require_mma: bool | str = False,
        max_registers: int | None = None,
        register_headroom: int = 0,
        int64_offsets: Sequence[str] = (),
    ) -> None:
        """Raise AssertionError unless the kernel has no spills and no stack frame.

        Args:
            require_v4_loads: also require at least one 128-bit global load (``ld.global.v4``).
            require_v4_stores: also require at least one 128-bit global store.
            require_mma: True requires ``mma.sync`` or ``wgmma``; a string names the exact
                `counts` key required (``"wgmma"``, ``"mma.sync"``, ``"cp.async"``, ...).
            max_registers: also require at most this many registers per thread.
            register_headroom: also require this many registers to spare below
                `register_limit`.
            int64_offsets: integer parameters (strides, sizes) that multiply row, head or
                batch indices: each must enter only 64-bit products in the PTX, never a 32-bit
                one, and at least one must enter a 64-bit product (see `offset_products`).
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
        if self.registers + register_headroom > self.register_limit:
            problems.append(
                f"{self.registers} registers leave fewer than {register_headroom} spare below "
                f"the limit of {self.register_limit}"
            )
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
        if int64_offsets:
            problems += _offset_problems(self.offset_products(int64_offsets))
        if problems:
            raise AssertionError(
                "GPU compile check failed for "
                + self.summary()
                + "\n  - "
                + "\n  - ".join(problems)
            )


def _offset_problems(products: Mapping[str, list[str]]) -> list[str]:
    problems = []
    for name, found in products.items():
        narrow = [p.removeprefix("narrow: ") for p in found if p.startswith("narrow: ")]
        if narrow:
            problems.append(
                f"{name} enters {len(narrow)} 32-bit product(s) (e.g. `{narrow[0]}`): an offset "
                "that wraps past 2**31 elements; cast the index to tl.int64 before multiplying"
            )
    if not any(p.startswith("wide: ") for found in products.values() for p in found):
        problems.append(f"none of {list(products)} enters a 64-bit product in the PTX")
    return problems


def assert_same_figures(
    report: GpuCompileReport, twin: GpuCompileReport, *, register_slack: int = 0
) -> None:
    """Raise AssertionError unless two compiles of one config (e.g. the fp16 and the bf16
    signature) have the same `figures`, registers within ``register_slack``."""
    a, b = report.figures(), twin.figures()
    regs_a, regs_b = a.pop("registers"), b.pop("registers")
    if a != b or abs(regs_a - regs_b) > register_slack:
        raise AssertionError(
            f"figures differ (registers may differ by {register_slack}):\n  "
            f"{report.summary()}\n  {twin.summary()}"
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

    def with_dtype(self, old: str, new: str) -> CompileJob:
        """The same job with every ``*old`` pointer of the signature made ``*new`` (e.g. the
        bf16 twin of an fp16 job)."""
        signature = {k: f"*{new}" if v == f"*{old}" else v for k, v in self.signature.items()}
        return dataclasses.replace(self, signature=signature)


# ------------------------------------------------------------------------ scheduling

# Jobs compiling in the pool, by cache key: a second request waits for the first.
_inflight: dict[str, Future[dict[str, Any]]] = {}
_inflight_lock = threading.Lock()


def _report(spec: CompileSpec, facts: Mapping[str, Any], cached: bool) -> GpuCompileReport:
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
        signature=dict(spec.signature),
        divisible=spec.divisible,
        ptx_version=facts["ptx_version"],
        compile_seconds=facts["compile_seconds"],
        cached=cached,
        ptx=facts["ptx"],
        ptxas_log=facts["ptxas_log"],
    )


def _compile_here(kernel: Any, spec: CompileSpec) -> dict[str, Any]:
    """Compile in this process (compiled-mode kernels, when this process's triton is the one
    that compiles) or in one worker (interpreter mode, or another compile triton)."""
    jit_fn = jit_function(kernel)
    if jit_fn is not None and compile_triton_dir() is None:
        try:
            return compile_facts(jit_fn, spec)
        except GpuCompileError:
            raise
        except Exception as exc:
            raise GpuCompileError(f"{jit_fn.__name__} {spec}: {exception_text(exc)}") from exc
    ref = kernel_ref(kernel)
    if ref is None:
        raise GpuCompileError(
            f"{python_function(kernel).__qualname__} was decorated in interpreter mode and is "
            "not a module-level object, so it cannot be re-imported in compiled mode; define "
            "it at module level"
        )
    return compile_pool(1).submit(ref, spec).result()


def _tile_size(spec: CompileSpec) -> int:
    """Product of the BLOCK_* constexprs times the stages: the pool's priority, as bigger
    tiles compile longer and should not trail at the end."""
    size = spec.num_stages
    for name, value in spec.constexprs:
        if name.startswith("BLOCK") and isinstance(value, int) and value > 0:
            size *= value
    return size


def _submit(kernel: Any, spec: CompileSpec, key: str, processes: int) -> Future[dict[str, Any]]:
    """A future of the facts: the job already compiling under ``key``, or a new pool job whose
    result is cached when it lands (``key`` empty: no sharing, no caching)."""
    ref = kernel_ref(kernel)
    assert ref is not None, "local kernels are compiled by _compile_here"
    pool = compile_pool(processes)
    if not key:
        return pool.submit(ref, spec, _tile_size(spec))
    with _inflight_lock:
        if key in _inflight:
            return _inflight[key]
        fut = pool.submit(ref, spec, _tile_size(spec))
        _inflight[key] = fut

    def land(f: Future[dict[str, Any]]) -> None:
        if not f.cancelled() and f.exception() is None:
            store_cached(key, f.result())
        with _inflight_lock:
            _inflight.pop(key, None)

    fut.add_done_callback(land)
    return fut


def _processes(processes: int | None) -> int:
    if processes is None:
        processes = int(os.environ.get("FUSEDOPS_COMPILE_PROCS", "0")) or os.cpu_count() or 1
    return max(1, processes)


def _specs(jobs: Sequence[CompileJob]) -> tuple[list[CompileSpec], list[str]]:
    """Validated specs and cache keys of ``jobs`` (each kernel fingerprinted once)."""
    hashes: dict[int, str] = {}
    specs, keys = [], []
    for j in jobs:
        spec = make_spec(
            j.kernel,
            j.signature,
            j.constexprs,
            j.arch,
            j.num_warps,
            j.num_stages,
            j.divisible,
            j.fp_fusion,
        )
        if id(j.kernel) not in hashes:
            hashes[id(j.kernel)] = fingerprint(j.kernel)
        specs.append(spec)
        keys.append(cache_key(hashes[id(j.kernel)], spec))
    return specs, keys


def _as_jobs(jobs: Sequence[CompileJob | Mapping[str, Any]]) -> list[CompileJob]:
    return [j if isinstance(j, CompileJob) else CompileJob(**j) for j in jobs]


# ------------------------------------------------------------------------ entry points


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
    job = CompileJob(
        kernel, signature, constexprs, arch, num_warps, num_stages, divisible, fp_fusion
    )
    return compile_many([job], processes=1, use_cache=use_cache)[0]


def compile_many(
    jobs: Sequence[CompileJob | Mapping[str, Any]],
    processes: int | None = None,
    *,
    use_cache: bool = True,
) -> list[GpuCompileReport]:
    """Compile many kernel configurations in parallel; reports come back in job order.

    Cached results are returned without compiling, and identical jobs are compiled once (also
    when one is still compiling for an earlier `prefetch` or call). Misses go to up to
    ``processes`` worker subprocesses (default: ``$FUSEDOPS_COMPILE_PROCS`` or the CPU count),
    the biggest tiles first so that the slowest compiles do not trail at the end; with
    ``processes=1`` compiled-mode kernels are compiled in this process. Every job is attempted;
    if any fail, one GpuCompileError lists them all.

    Args:
        jobs: `CompileJob` instances, or mappings with the keyword arguments of
            `compile_for_gpu` (``kernel``, ``signature``, ``constexprs``, ``arch``, ...).
        processes: worker count.
        use_cache: read and write the on-disk results cache.
    """
    norm = _as_jobs(jobs)
    specs, keys = _specs(norm)
    procs = _processes(processes)
    facts: dict[str, tuple[dict[str, Any], bool]] = {}  # key -> (facts, cached)
    misses: dict[str, int] = {}  # key -> first job index
    for i, key in enumerate(keys):
        if key in facts or key in misses:
            continue
        hit = load_cached(key) if use_cache else None
        if hit is None:
            misses[key] = i
        else:
            facts[key] = (hit, True)

    futures: dict[str, Future[dict[str, Any]]] = {}
    local: list[str] = []
    for key, i in misses.items():
        kernel = norm[i].kernel
        if kernel_ref(kernel) is None or (procs == 1 and jit_function(kernel) is not None):
            local.append(key)
        else:
            futures[key] = _submit(kernel, specs[i], key if use_cache else "", procs)
    errors: list[str] = []
    for key in local:
        i = misses[key]
        try:
            facts[key] = (_compile_here(norm[i].kernel, specs[i]), False)
        except GpuCompileError as exc:
            errors.append(exception_text(exc))
            continue
        if use_cache:
            store_cached(key, facts[key][0])
    for key, fut in futures.items():
        try:
            facts[key] = (fut.result(), False)
        except GpuCompileError as exc:
            errors.append(exception_text(exc))
    if errors:
        raise GpuCompileError(
            f"{len(errors)} of {len(misses)} GPU compile jobs failed:\n\n" + "\n\n".join(errors)
        )
    return [_report(spec, *facts[key]) for spec, key in zip(specs, keys, strict=True)]


def compile_families(
    families: Mapping[str, Sequence[CompileJob]], processes: int | None = None
) -> dict[str, list[GpuCompileReport]]:
    """`compile_many` of every family's jobs at once (one queue, so no family waits for
    another's last compile), the reports split back by family."""
    jobs = [job for family in families.values() for job in family]
    reports = iter(compile_many(jobs, processes))
    return {name: [next(reports) for _ in family] for name, family in families.items()}


def with_dtype_twins(
    families: Mapping[str, Sequence[CompileJob]],
    twinned: Sequence[CompileJob],
    old: str = "fp16",
    new: str = "bf16",
) -> dict[str, list[CompileJob]]:
    """``families`` plus two more: ``new`` holds the ``new``-dtype twins of the ``twinned`` jobs
    (`CompileJob.with_dtype`) and ``"<old> twins"`` the jobs themselves, in the same order,
    for `assert_same_figures`."""
    out = {name: list(jobs) for name, jobs in families.items()}
    out[new] = [job.with_dtype(old, new) for job in twinned]
    out[f"{old} twins"] = list(twinned)
    return out


def prefetch(jobs: Sequence[CompileJob | Mapping[str, Any]], processes: int | None = None) -> int:
    """Start compiling, in the background, the jobs that are neither cached nor compiling, and
    return how many were started; a later `compile_many` of the same jobs waits for them.
    Jobs still queued when the process exits are dropped."""
    norm = _as_jobs(jobs)
    specs, keys = _specs(norm)
    procs = _processes(processes)
    started = 0
    for i in range(len(norm)):
        with _inflight_lock:
            busy = keys[i] in _inflight
        if busy or kernel_ref(norm[i].kernel) is None or load_cached(keys[i]) is not None:
            continue
        _submit(norm[i].kernel, specs[i], keys[i], procs)
        started += 1
    return started


# ------------------------------------------------------------------------ reports


def report_compiles(name: str, labels: Sequence[str], reports: Sequence[GpuCompileReport]) -> str:
    """Write the per-config table to ``<sys.prefix>/fusedops-reports/gpu_compile_<name>.txt``,
    print it (visible with ``pytest -s``) and return the file's path.

    ``labels`` lead each line (e.g. the dtypes: a report's summary names only constexprs).
    """
    lines = [f"{label} {r.summary()}" for label, r in zip(labels, reports, strict=True)]
    path = os.path.join(sys.prefix, "fusedops-reports", f"gpu_compile_{name}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"\n{name}: {len(reports)} compiles (table in {path})")
    print("\n".join(lines))
    return path


def assert_compiled_clean(
    reports: Sequence[GpuCompileReport], bytes_per_thread: Sequence[int], **checks: Any
) -> None:
    """`GpuCompileReport.assert_clean` on every report (0 spills, 0 stack), requiring 128-bit
    loads wherever a thread owns >= 16 contiguous bytes of a row (below that none can exist);
    ``checks`` are further `assert_clean` keywords (``int64_offsets=...``, ...) for all."""
    for report, nbytes in zip(reports, bytes_per_thread, strict=True):
        report.assert_clean(require_v4_loads=nbytes >= 16, **checks)
