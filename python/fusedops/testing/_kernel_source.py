"""Kernel introspection: the Python function under a ``@triton.jit`` object, a fingerprint of its
source (with the helpers and constexpr globals it uses), and the module/qualname reference a
compiled-mode worker process uses to import it afresh."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import sys
import types
from typing import Any

import triton
import triton.language as tl

from fusedops.testing._errors import GpuCompileError

_MAIN_ALIAS = "__fusedops_gpu_compile_main__"


@dataclasses.dataclass(frozen=True)
class _KernelRef:
    """How a worker process finds a kernel: module name, qualified name, source file."""

    module: str
    qualname: str
    file: str | None


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
