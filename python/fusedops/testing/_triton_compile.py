"""Compilation proper (runs in this process or in a worker): validating a job into a picklable
`_Spec` and compiling it with ``triton.compile`` + ``ptxas -v`` into JSON-able facts."""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import triton

from fusedops.testing._compile_cache import _ensure_triton_cache_dir
from fusedops.testing._kernel_source import _python_function
from fusedops.testing._ptx import _parse_ptxas_log, _run_ptxas, count_ptx_instructions

_INT_TYPES = ("i1", "i8", "i16", "i32", "i64", "u1", "u8", "u16", "u32", "u64")


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
