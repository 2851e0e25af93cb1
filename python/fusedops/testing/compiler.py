"""Compiling one kernel configuration (in this process or in a worker): the picklable
`CompileSpec` of a job, the kernel's source fingerprint and importable reference, and
`compile_facts` (``triton.compile`` + ``ptxas -v`` -> JSON-able facts)."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import io
import json
import os
import re
import sys
import threading
import time
import types
from collections.abc import Iterable, Mapping
from typing import Any

import triton
import triton.language as tl

from fusedops.caches import cache_dir
from fusedops.testing.ptx import (
    GpuCompileError,
    count_ptx_instructions,
    parse_ptxas_log,
    run_ptxas,
)

__all__ = [
    "CompileSpec",
    "KernelRef",
    "cache_key",
    "compile_cache_dir",
    "compile_facts",
    "compile_triton_dir",
    "compile_triton_version",
    "exception_text",
    "fingerprint",
    "jit_function",
    "kernel_ref",
    "load_cached",
    "make_spec",
    "module_without_int64_casts",
    "python_function",
    "resolve_kernel",
    "store_cached",
    "use_triton_cache_dir",
]

_INT_TYPES = ("i1", "i8", "i16", "i32", "i64", "u1", "u8", "u16", "u32", "u64")
_MAIN_ALIAS = "__fusedops_gpu_compile_main__"


@dataclasses.dataclass(frozen=True)
class CompileSpec:
    """Everything of a job but the kernel object: picklable, hashable, validated."""

    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]
    arch: int
    num_warps: int
    num_stages: int
    divisible: tuple[str, ...]
    fp_fusion: bool


@dataclasses.dataclass(frozen=True)
class KernelRef:
    """How a worker process finds a kernel: module name, qualified name, source file."""

    module: str
    qualname: str
    file: str | None


def use_triton_cache_dir() -> None:
    """Point Triton's cache at ``fusedops.caches.cache_dir("TRITON_CACHE_DIR")`` unless the
    environment or ``triton.knobs`` already chose one."""
    if "TRITON_CACHE_DIR" not in os.environ and "dir" not in vars(triton.knobs.cache):
        os.environ["TRITON_CACHE_DIR"] = cache_dir("TRITON_CACHE_DIR")


def exception_text(exc: BaseException) -> str:
    """``exc``'s message followed by those of the exceptions that caused it, never empty.

    Triton's ``CompilationError`` may carry little text of its own and wrap the real error
    (e.g. the ValueError from ``tl.arange``) as ``__cause__``; a cause's message is added only
    when the text so far does not already contain it.
    """
    text = str(exc).strip() or type(exc).__name__
    seen = {id(exc)}
    cur: BaseException | None = exc
    while cur is not None:
        nxt = cur.__cause__
        if nxt is None and not cur.__suppress_context__:
            nxt = cur.__context__
        cur = nxt
        if cur is None or id(cur) in seen:
            break
        seen.add(id(cur))
        msg = str(cur).strip()
        if (msg or type(cur).__name__) not in text:
            text += f"\n  caused by {type(cur).__name__}" + (f": {msg}" if msg else "")
    return text


# ------------------------------------------------------------------------ kernel objects


def python_function(obj: Any) -> types.FunctionType:
    """The plain Python function under a JITFunction / InterpretedFunction / Autotuner / ..."""
    cur = obj
    for _ in range(16):
        if isinstance(cur, types.FunctionType):
            return cur
        cur = getattr(cur, "fn", None)
        if cur is None:
            break
    raise TypeError(f"expected a @triton.jit kernel, got {obj!r}")


def jit_function(obj: Any) -> triton.runtime.JITFunction | None:
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
        python_function(val)
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


def fingerprint(kernel: Any) -> str:
    """Hash of a kernel's source plus the ``@triton.jit`` helpers and constexpr globals it uses.

    The same for compiled-mode and interpreter-mode objects, so a result cached by one kind of
    session is found by the other.
    """
    return _fingerprint(kernel, set())


def _fingerprint(kernel: Any, seen: set[tuple[str, str]]) -> str:
    fn = python_function(kernel)
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
                continue  # covered by the triton version in the cache key
            for attr in names:
                desc = _describe_global(vars(val).get(attr), seen)
                if desc is not None:
                    h.update(f"{name}.{attr}={desc};".encode())
        else:
            desc = _describe_global(val, seen)
            if desc is not None:
                h.update(f"{name}={desc};".encode())
    return h.hexdigest()


def kernel_ref(kernel: Any) -> KernelRef | None:
    """Module/qualname reference a fresh process can import, or None for local kernels."""
    fn = python_function(kernel)
    if "<locals>" in fn.__qualname__:
        return None
    try:
        file = inspect.getsourcefile(fn)
    except TypeError:
        file = None
    if fn.__module__ == "__main__" and not file:
        return None
    return KernelRef(fn.__module__, fn.__qualname__, file)


def _import_ref_module(ref: KernelRef) -> types.ModuleType:
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


def resolve_kernel(ref: KernelRef) -> triton.runtime.JITFunction:
    """Import a kernel in this (compiled-mode) process and return its JITFunction."""
    obj: Any = _import_ref_module(ref)
    for part in ref.qualname.split("."):
        obj = getattr(obj, part)
    jit_fn = jit_function(obj)
    if jit_fn is not None:
        return jit_fn
    if isinstance(obj, types.FunctionType):  # e.g. `kernel = triton.jit(_impl)` names `_impl`
        return triton.jit(obj)
    raise GpuCompileError(
        f"{ref.module}.{ref.qualname} is still an interpreter object after a compiled-mode "
        "import; does its module switch triton.knobs.runtime.interpret on by itself?"
    )


def module_without_int64_casts(module: types.ModuleType, folder: str) -> types.ModuleType:
    """A copy of a kernel module with every ``.to(tl.int64)`` removed from its source: the
    kernels index in 32 bits, so a check for 64-bit offsets can be shown to fail on them.

    The copy is written to ``folder`` and imported as ``<module>_no_int64`` (a sibling name,
    so relative imports still resolve); workers load it from that file.
    """
    source = inspect.getsource(module)
    narrowed = source.replace(".to(tl.int64)", "")
    if narrowed == source:
        raise ValueError(f"{module.__name__} has no .to(tl.int64) casts to remove")
    name = f"{module.__name__}_no_int64"
    path = os.path.join(folder, f"{name.rpartition('.')[2]}.py")
    with open(path, "w") as f:
        f.write(narrowed)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise GpuCompileError(f"cannot load {path}")
    copy = importlib.util.module_from_spec(spec)
    sys.modules[name] = copy
    spec.loader.exec_module(copy)
    return copy


# ------------------------------------------------------------------------ which triton compiles

COMPILE_TRITON_ENV = "FUSEDOPS_COMPILE_TRITON"


def compile_triton_dir() -> str | None:
    """The folder of the triton the compile workers use when it is not this process's own:
    ``$FUSEDOPS_COMPILE_TRITON``, else ``<sys.prefix>/triton-gpu`` (where ``make setup`` puts
    the triton that torch 2.13.0's CUDA wheel pins, beside a CPU torch whose interpreter runs
    another triton); None when neither holds a triton package (workers then use this
    process's triton)."""
    path = os.environ.get(COMPILE_TRITON_ENV) or os.path.join(sys.prefix, "triton-gpu")
    return path if os.path.isfile(os.path.join(path, "triton", "__init__.py")) else None


def compile_triton_version() -> str:
    """The version of the triton that compiles the kernels (see :func:`compile_triton_dir`)."""
    path = compile_triton_dir()
    if path is None:
        return triton.__version__
    for dist in importlib.metadata.distributions(path=[path]):
        if dist.metadata["Name"] == "triton":
            return dist.version
    raise GpuCompileError(f"{path} holds a triton package without its metadata")


# ------------------------------------------------------------------------ results cache

# Bump when the facts stored in the results cache change meaning or shape.
_HARNESS_VERSION = 1


def compile_cache_dir() -> str:
    """Folder of the results cache: ``fusedops.caches.cache_dir("FUSEDOPS_COMPILE_CACHE")``
    (created on demand)."""
    path = cache_dir("FUSEDOPS_COMPILE_CACHE")
    os.makedirs(path, exist_ok=True)
    return path


def cache_key(kernel_hash: str, spec: CompileSpec) -> str:
    """Results-cache key of ``spec`` for a kernel of `fingerprint` ``kernel_hash``."""
    payload = json.dumps(
        [
            _HARNESS_VERSION,
            compile_triton_version(),
            kernel_hash,
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


def load_cached(key: str) -> dict[str, Any] | None:
    """The facts cached under ``key``, or None."""
    try:
        with gzip.open(_cache_path(key), "rt", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, EOFError):
        return None


def store_cached(key: str, facts: Mapping[str, Any]) -> None:
    """Cache ``facts`` under ``key`` (best effort: an unwritable cache is skipped)."""
    tmp = ""
    try:
        path = _cache_path(key)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as f:
            json.dump(facts, f)
        os.replace(tmp, path)  # atomic: concurrent sessions never see half a file
    except OSError:
        if tmp:
            with contextlib.suppress(OSError):
                os.remove(tmp)


# ------------------------------------------------------------------------ compilation


def make_spec(
    kernel: Any,
    signature: Mapping[str, str],
    constexprs: Mapping[str, Any],
    arch: int,
    num_warps: int,
    num_stages: int,
    divisible: Iterable[str],
    fp_fusion: bool,
) -> CompileSpec:
    """Validate a job's arguments against the kernel's parameter list and freeze them."""
    fn = python_function(kernel)
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
    divisible = tuple(divisible)
    for d in divisible:
        if d not in sig:
            raise ValueError(f"{name}: divisible names unknown parameter {d!r}")
        if not (sig[d].startswith("*") or sig[d] in _INT_TYPES):
            raise ValueError(f"{name}: divisible parameter {d!r} has type {sig[d]!r}")
    return CompileSpec(
        signature=tuple(sig.items()),
        constexprs=tuple((k, constexprs[k]) for k in want_const),
        arch=int(arch),
        num_warps=int(num_warps),
        num_stages=int(num_stages),
        divisible=tuple(sorted(set(divisible), key=params.index)),
        fp_fusion=bool(fp_fusion),
    )


def compile_facts(jit_fn: triton.runtime.JITFunction, spec: CompileSpec) -> dict[str, Any]:
    """``triton.compile`` + ``ptxas -v`` for one configuration; returns the JSON-able facts
    (kernel name, registers, spills, stack frame, shared memory, instruction counts, PTX)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    use_triton_cache_dir()
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
    # than running ptxas twice. On a Triton cache hit no log appears and ptxas runs here.
    printed = io.StringIO()
    with triton.knobs.nvidia.scope(), contextlib.redirect_stdout(printed):
        triton.knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(src, target=GPUTarget("cuda", spec.arch, 32), options=options)
    ptx: str = compiled.asm["ptx"]
    parsed = parse_ptxas_log(printed.getvalue())
    if parsed is None:
        parsed = run_ptxas(ptx, spec.arch, spec.fp_fusion)
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
