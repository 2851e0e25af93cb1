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

import atexit
import contextlib
import dataclasses
import gzip
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import pickle
import queue
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

import triton
import triton.language as tl

__all__ = [
    "CompileJob",
    "GpuCompileError",
    "GpuCompileReport",
    "compile_cache_dir",
    "compile_for_gpu",
    "compile_many",
    "count_ptx_instructions",
]

# Bump when the facts stored in the cache change meaning or shape.
_HARNESS_VERSION = 1
_MAIN_ALIAS = "__fusedops_gpu_compile_main__"
_INT_TYPES = ("i1", "i8", "i16", "i32", "i64", "u1", "u8", "u16", "u32", "u64")


class GpuCompileError(RuntimeError):
    """A kernel failed to compile or assemble for a GPU target (message holds the cause)."""


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


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The picklable part of a job: everything but the kernel object."""

    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]
    arch: int
    num_warps: int
    num_stages: int
    divisible: tuple[str, ...]
    fp_fusion: bool


@dataclasses.dataclass(frozen=True)
class _KernelRef:
    """How a worker process finds a kernel: module name, qualified name, source file."""

    module: str
    qualname: str
    file: str | None


# --------------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------------


def _triton_bin_dir() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _ptxas_for(arch: int) -> str:
    """The ptxas triton itself uses: ``ptxas`` below sm_90, ``ptxas-blackwell`` from sm_90 on
    (triton 3.9 emits ``.version 9.x`` PTX for sm_90+, which the older ptxas refuses)."""
    name = "ptxas" if arch < 90 else "ptxas-blackwell"
    path = os.path.join(_triton_bin_dir(), name)
    if not os.path.exists(path):  # older wheels ship a single ptxas
        path = os.path.join(_triton_bin_dir(), "ptxas")
    if not os.path.exists(path):
        raise GpuCompileError(f"no ptxas in the triton wheel ({_triton_bin_dir()})")
    return path


def _gpu_name(arch: int) -> str:
    # Same rule as triton's sm_arch_from_capability: arch-specific "a" targets from sm_90 on.
    return f"sm_{arch}{'a' if arch >= 90 else ''}"


def _writable_dir(preferred: str, fallback_name: str) -> str:
    try:
        os.makedirs(preferred, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    path = os.path.join(tempfile.gettempdir(), fallback_name)
    os.makedirs(path, exist_ok=True)
    return path


def compile_cache_dir() -> str:
    """Directory of the results cache: ``$FUSEDOPS_COMPILE_CACHE`` or
    ``<sys.prefix>/fusedops-compile-cache`` (created on demand)."""
    env = os.environ.get("FUSEDOPS_COMPILE_CACHE")
    if env:
        os.makedirs(env, exist_ok=True)
        return env
    return _writable_dir(
        os.path.join(sys.prefix, "fusedops-compile-cache"), "fusedops-compile-cache"
    )


def _default_triton_cache_dir() -> str:
    return _writable_dir(os.path.join(sys.prefix, "triton-cache"), "fusedops-triton-cache")


def _ensure_triton_cache_dir() -> None:
    """Point Triton's cache under sys.prefix unless the user chose a location."""
    if "TRITON_CACHE_DIR" not in os.environ and "dir" not in vars(triton.knobs.cache):
        os.environ["TRITON_CACHE_DIR"] = _default_triton_cache_dir()


# --------------------------------------------------------------------------------------------
# Kernel introspection
# --------------------------------------------------------------------------------------------


def _python_function(obj: Any) -> types.FunctionType:
    """The plain Python function under a JITFunction / InterpretedFunction / Autotuner / ..."""
    cur = obj
    for _ in range(16):
        if isinstance(cur, types.FunctionType):
            return cur
        cur = getattr(cur, "fn", None)
        if cur is None:
            break
    raise TypeError(f"expected a @triton.jit kernel, got {obj!r}")


def _jit_function(obj: Any) -> triton.runtime.JITFunction | None:
    """The real (compiled-mode) JITFunction under ``obj``, or None (interpreter mode)."""
    cur = obj
    for _ in range(16):
        if isinstance(cur, triton.runtime.JITFunction):
            return cur
        if isinstance(cur, types.FunctionType):
            return None
        cur = getattr(cur, "fn", None)
        if cur is None:
            return None
    return None


def _is_triton_callable(val: Any) -> bool:
    if isinstance(val, type) or not type(val).__module__.startswith("triton."):
        return False
    try:
        _python_function(val)
    except TypeError:
        return False
    return True


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names) | set(code.co_freevars)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _describe_global(val: Any, seen: set[tuple[str, str]]) -> str | None:
    if isinstance(val, tl.constexpr):
        return f"constexpr:{val.value!r}"
    if _is_triton_callable(val):
        return "fn:" + _fingerprint(val, seen)
    if isinstance(val, (bool, int, float, str)):
        return repr(val)
    return None


def _fingerprint(kernel: Any, _seen: set[tuple[str, str]] | None = None) -> str:
    """Hash of a kernel's source plus the helpers and constexpr globals it refers to.

    Works the same for compiled-mode and interpreter-mode objects, so a result cached by an
    interpreter-mode test session is found by a compiled-mode one and vice versa.
    """
    fn = _python_function(kernel)
    seen = set() if _seen is None else _seen
    ident = (fn.__module__, fn.__qualname__)
    if ident in seen:
        return f"recursion:{ident}"
    seen.add(ident)
    h = hashlib.sha256(repr(ident).encode())
    try:
        h.update(inspect.getsource(fn).encode())
    except (OSError, TypeError):
        h.update(fn.__code__.co_code)
    names = sorted(_code_names(fn.__code__))
    scope: dict[str, Any] = dict(fn.__globals__)
    if fn.__closure__:
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__, strict=True):
            with contextlib.suppress(ValueError):  # empty cell
                scope[name] = cell.cell_contents
    for name in names:
        if name not in scope:
            continue
        val = scope[name]
        if isinstance(val, types.ModuleType):
            if val.__name__.split(".")[0] == "triton":
                continue  # covered by the triton version in the key
            for attr in names:
                desc = _describe_global(vars(val).get(attr), seen)
                if desc is not None:
                    h.update(f"{name}.{attr}={desc};".encode())
        else:
            desc = _describe_global(val, seen)
            if desc is not None:
                h.update(f"{name}={desc};".encode())
    return h.hexdigest()


def _kernel_ref(kernel: Any) -> _KernelRef | None:
    """Module/qualname reference a fresh process can import, or None for local kernels."""
    fn = _python_function(kernel)
    if "<locals>" in fn.__qualname__:
        return None
    try:
        file = inspect.getsourcefile(fn)
    except TypeError:
        file = None
    if fn.__module__ == "__main__" and not file:
        return None
    return _KernelRef(fn.__module__, fn.__qualname__, file)


def _import_ref_module(ref: _KernelRef) -> types.ModuleType:
    """Import the kernel's module; a script's ``__main__`` (or a module not importable by name,
    e.g. a test file under pytest's importlib mode) is loaded from its file instead."""
    name = _MAIN_ALIAS if ref.module == "__main__" else ref.module
    if name in sys.modules:
        return sys.modules[name]
    if ref.module != "__main__":
        try:
            return importlib.import_module(ref.module)
        except ModuleNotFoundError as exc:
            if not ref.file or not (exc.name and ref.module.startswith(exc.name)):
                raise
    if not ref.file:
        raise GpuCompileError(f"cannot import {ref.module}: no source file")
    spec = importlib.util.spec_from_file_location(name, ref.file)
    if spec is None or spec.loader is None:
        raise GpuCompileError(f"cannot load {ref.file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _resolve_ref(ref: _KernelRef) -> triton.runtime.JITFunction:
    """Import a kernel in this (compiled-mode) process and return its JITFunction."""
    obj: Any = _import_ref_module(ref)
    for part in ref.qualname.split("."):
        obj = getattr(obj, part)
    jit_fn = _jit_function(obj)
    if jit_fn is not None:
        return jit_fn
    if isinstance(obj, types.FunctionType):  # e.g. `kernel = triton.jit(_impl)` names `_impl`
        return triton.jit(obj)
    raise GpuCompileError(
        f"{ref.module}.{ref.qualname} is still an interpreter object after a compiled-mode "
        "import; does its module switch triton.knobs.runtime.interpret on by itself?"
    )


# --------------------------------------------------------------------------------------------
# PTX / ptxas analysis
# --------------------------------------------------------------------------------------------

_GLOBAL_MEM = re.compile(r"^\s*(?:@!?%\w+\s+)?(ld|st)\.global((?:\.[\w:]+)*)", re.MULTILINE)
_COUNTED: dict[str, re.Pattern[str]] = {
    "mma.sync": re.compile(r"^\s*(?:@!?%\w+\s+)?mma\.sync\b", re.MULTILINE),
    "wgmma": re.compile(r"^\s*(?:@!?%\w+\s+)?wgmma\.mma_async\b", re.MULTILINE),
    "cp.async": re.compile(r"^\s*(?:@!?%\w+\s+)?cp\.async\.c[ag]\b", re.MULTILINE),
    "cp.async.bulk": re.compile(r"^\s*(?:@!?%\w+\s+)?cp\.async\.bulk\b", re.MULTILINE),
    "ldmatrix": re.compile(r"^\s*(?:@!?%\w+\s+)?ldmatrix\b", re.MULTILINE),
    "atom.global": re.compile(r"^\s*(?:@!?%\w+\s+)?(?:atom|red)\.global\b", re.MULTILINE),
    "bar.sync": re.compile(r"^\s*(?:@!?%\w+\s+)?(?:bar\.sync|barrier\.sync)\b", re.MULTILINE),
}


def count_ptx_instructions(ptx: str) -> dict[str, int]:
    """Static counts of interesting PTX instructions.

    Keys: ``ld.global.v4`` / ``st.global.v4`` (128-bit: 4 x b32, also how fp16/bf16 vectors
    appear), ``ld.global.v2`` / ``st.global.v2``, ``ld.global.v8`` / ``st.global.v8`` (256-bit),
    ``ld.global.scalar`` / ``st.global.scalar`` (no vector suffix), ``mma.sync``, ``wgmma``
    (``wgmma.mma_async``), ``cp.async`` (``cp.async.ca/cg``; not commit/wait), ``cp.async.bulk``
    (TMA), ``ldmatrix``, ``atom.global`` (atom/red), ``bar.sync``.
    """
    text = re.sub(r"//[^\n]*", "", ptx)
    counts = {
        f"{op}.global.{kind}": 0 for op in ("ld", "st") for kind in ("v8", "v4", "v2", "scalar")
    }
    for op, mods in _GLOBAL_MEM.findall(text):
        parts = mods.split(".")
        kind = next((v for v in ("v8", "v4", "v2") if v in parts), "scalar")
        counts[f"{op}.global.{kind}"] += 1
    for key, pattern in _COUNTED.items():
        counts[key] = len(pattern.findall(text))
    return counts


_REGS = re.compile(r"Used (\d+) registers")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def _run_ptxas(ptx: str, arch: int, fp_fusion: bool) -> tuple[str, int, int, int, int]:
    """Assemble PTX as triton does, with -v: (log, regs, stack, spill stores, spill loads)."""
    ptxas = _ptxas_for(arch)
    with tempfile.TemporaryDirectory(prefix="fusedops-ptxas-") as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [
            ptxas,
            "-lineinfo",
            "-v",
            "--regAllocOptLevel=2",  # as triton 3.9 passes it
            *([] if fp_fusion else ["--fmad=false"]),
            f"--gpu-name={_gpu_name(arch)}",
            src,
            "-o",
            os.path.join(tmp, "kernel.cubin"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise GpuCompileError(f"ptxas failed ({proc.returncode}): {' '.join(cmd)}\n{log}")
    parsed = _parse_ptxas_log(log)
    if parsed is None:
        raise GpuCompileError(f"could not parse ptxas -v output:\n{log}")
    return parsed


def _parse_ptxas_log(log: str) -> tuple[str, int, int, int, int] | None:
    """(log, registers, stack frame, spill stores, spill loads) from ``ptxas -v``, or None."""
    regs = _REGS.search(log)
    frame = _FRAME.search(log)
    if regs is None or frame is None:
        return None
    stack, spill_st, spill_ld = (int(g) for g in frame.groups())
    return log.strip(), int(regs.group(1)), stack, spill_st, spill_ld


# --------------------------------------------------------------------------------------------
# Compilation proper (runs in this process or in a worker)
# --------------------------------------------------------------------------------------------


def _make_spec(
    kernel: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any],
    arch: int,
    num_warps: int,
    num_stages: int,
    divisible: Iterable[str],
    fp_fusion: bool,
) -> _Spec:
    """Validate the arguments against the kernel's parameter list and freeze them."""
    fn = _python_function(kernel)
    params = list(inspect.signature(fn).parameters)
    sig = dict(signature)
    name = fn.__qualname__
    if list(sig) != params:
        raise ValueError(
            f"{name}: signature keys {list(sig)} must list the kernel's parameters {params} "
            "in order"
        )
    want_const = [k for k, v in sig.items() if v == "constexpr"]
    missing = [k for k in want_const if k not in constexprs]
    extra = [k for k in constexprs if sig.get(k) != "constexpr"]
    if missing or extra:
        raise ValueError(
            f"{name}: constexprs must give exactly the 'constexpr' parameters "
            f"(missing {missing}, not constexpr in signature {extra})"
        )
    div = tuple(sorted(set(divisible), key=params.index)) if divisible else ()
    for d in divisible:
        if d not in sig:
            raise ValueError(f"{name}: divisible names unknown parameter {d!r}")
        if not (sig[d].startswith("*") or sig[d] in _INT_TYPES):
            raise ValueError(f"{name}: divisible parameter {d!r} has type {sig[d]!r}")
    return _Spec(
        signature=tuple(sig.items()),
        constexprs=tuple((k, constexprs[k]) for k in want_const),
        arch=int(arch),
        num_warps=int(num_warps),
        num_stages=int(num_stages),
        divisible=div,
        fp_fusion=bool(fp_fusion),
    )


def _compile_facts(jit_fn: triton.runtime.JITFunction, spec: _Spec) -> dict[str, Any]:
    """triton.compile + ptxas -v for one config; returns the JSON-able facts."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _ensure_triton_cache_dir()
    start = time.perf_counter()
    names = [k for k, _ in spec.signature]
    attrs = {(names.index(d),): [["tt.divisibility", 16]] for d in spec.divisible}
    src = ASTSource(
        fn=jit_fn, signature=dict(spec.signature), constexprs=dict(spec.constexprs), attrs=attrs
    )
    options = {
        "num_warps": spec.num_warps,
        "num_stages": spec.num_stages,
        "enable_fp_fusion": spec.fp_fusion,
    }
    # Triton assembles the PTX with the wheel's ptxas anyway: have it print its -v log rather
    # than running ptxas twice. On a Triton cache hit no log appears and we run ptxas ourselves.
    printed = io.StringIO()
    with triton.knobs.nvidia.scope(), contextlib.redirect_stdout(printed):
        triton.knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(src, target=GPUTarget("cuda", spec.arch, 32), options=options)
    ptx: str = compiled.asm["ptx"]
    parsed = _parse_ptxas_log(printed.getvalue())
    if parsed is None:
        parsed = _run_ptxas(ptx, spec.arch, spec.fp_fusion)
    log, regs, stack, spill_st, spill_ld = parsed
    version = re.search(r"^\s*\.version\s+(\S+)", ptx, re.MULTILINE)
    return {
        "kernel_name": compiled.metadata.name,
        "registers": regs,
        "spill_stores": spill_st,
        "spill_loads": spill_ld,
        "stack_frame": stack,
        "shared_bytes": int(compiled.metadata.shared),
        "counts": count_ptx_instructions(ptx),
        "ptx_version": version.group(1) if version else "",
        "compile_seconds": time.perf_counter() - start,
        "ptx": ptx,
        "ptxas_log": log,
    }


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
# Results cache
# --------------------------------------------------------------------------------------------


def _cache_key(kernel: Any, spec: _Spec) -> str:
    payload = json.dumps(
        [
            _HARNESS_VERSION,
            triton.__version__,
            _fingerprint(kernel),
            [list(kv) for kv in spec.signature],
            [[k, repr(v)] for k, v in spec.constexprs],
            spec.arch,
            spec.num_warps,
            spec.num_stages,
            list(spec.divisible),
            spec.fp_fusion,
        ]
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _cache_path(key: str) -> str:
    return os.path.join(compile_cache_dir(), f"{key}.json.gz")


def _cache_load(key: str) -> dict[str, Any] | None:
    try:
        with gzip.open(_cache_path(key), "rt", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, EOFError):
        return None


def _cache_store(key: str, facts: Mapping[str, Any]) -> None:
    path = _cache_path(key)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            json.dump(facts, f)
        os.replace(tmp, path)  # atomic: concurrent sessions never see half a file
    except OSError:
        with contextlib.suppress(OSError):
            os.remove(tmp)


# --------------------------------------------------------------------------------------------
# Worker subprocesses (compiled mode, TRITON_INTERPRET removed)
# --------------------------------------------------------------------------------------------


def _write_frame(stream: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack(">Q", len(data)) + data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError
    (size,) = struct.unpack(">Q", header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    if "TRITON_CACHE_DIR" not in env:
        env["TRITON_CACHE_DIR"] = (
            triton.knobs.cache.dir
            if "dir" in vars(triton.knobs.cache)
            else _default_triton_cache_dir()
        )
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class _Worker:
    """One compiled-mode Python subprocess speaking length-prefixed pickles on stdin/stdout."""

    def __init__(self) -> None:
        code = "from fusedops.testing.gpu_compile import _worker_main; _worker_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_worker_env(),
            cwd=os.getcwd(),
        )

    def call(self, ref: _KernelRef, spec: _Spec) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            _write_frame(self.proc.stdin, (ref, spec))
            status, payload = _read_frame(self.proc.stdout)
        except (EOFError, OSError, BrokenPipeError) as exc:
            self.close()
            raise GpuCompileError(
                f"compile worker died (exit {self.proc.returncode}) on "
                f"{ref.module}.{ref.qualname}; see its stderr above"
            ) from exc
        if status != "ok":
            raise GpuCompileError(f"{ref.module}.{ref.qualname} {spec}:\n{payload}")
        return payload

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _WorkerPool:
    """``size`` worker subprocesses, started lazily, each driven by one thread."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: queue.SimpleQueue[_Worker | None] = queue.SimpleQueue()
        for _ in range(size):
            self._idle.put(None)
        self._executor = ThreadPoolExecutor(size, thread_name_prefix="fusedops-gpu-compile")

    def submit(self, ref: _KernelRef, spec: _Spec) -> Future[dict[str, Any]]:
        return self._executor.submit(self._run, ref, spec)

    def _run(self, ref: _KernelRef, spec: _Spec) -> dict[str, Any]:
        worker = self._idle.get()
        try:
            if worker is None or not worker.alive():
                worker = _Worker()
            return worker.call(ref, spec)
        finally:
            self._idle.put(worker if worker is not None and worker.alive() else None)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for _ in range(self.size):
            worker = self._idle.get()
            if worker is not None:
                worker.close()


_pool_lock = threading.Lock()
_pool: _WorkerPool | None = None


def _get_pool(size: int) -> _WorkerPool:
    """The shared pool, grown to at least ``size`` workers (warm workers are reused)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.size < size:
            if _pool is not None:
                _pool.close()
            _pool = _WorkerPool(size)
        return _pool


@atexit.register
def _close_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            _pool.close()
            _pool = None


def _worker_main() -> None:
    """Entry point of a worker subprocess: compile jobs from stdin until it closes."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints (triton, imported modules) go to stderr, not the protocol
    triton.knobs.runtime.interpret = False
    _ensure_triton_cache_dir()
    kernels: dict[_KernelRef, triton.runtime.JITFunction] = {}
    stdin = sys.stdin.buffer
    while True:
        try:
            ref, spec = _read_frame(stdin)
        except EOFError:
            return
        try:
            if ref not in kernels:
                kernels[ref] = _resolve_ref(ref)
            reply: tuple[str, Any] = ("ok", _compile_facts(kernels[ref], spec))
        except Exception:
            reply = ("error", traceback.format_exc())
        _write_frame(out, reply)


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
            raise GpuCompileError(f"{jit_fn.__name__} {spec}: {exc}") from exc
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
            errors.append(str(exc))
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
