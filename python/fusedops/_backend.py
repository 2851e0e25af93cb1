"""Backend selection: which implementation runs a fused op.

Per call, ``auto`` picks the Triton kernels for CUDA tensors and the C++ kernels of
``fusedops._C`` for CPU tensors. ``use_backend(...)`` (a context manager) or the environment
variable ``FUSEDOPS_BACKEND`` force one of ``triton``, ``cpp`` or ``reference``. There is no
silent fallback: a forced backend that cannot run the call raises an error that says why.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "cpp", "reference")
ENV_VAR = "FUSEDOPS_BACKEND"

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fusedops_backend", default=None
)


def _check_name(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ValueError(
            f"fusedops: unknown backend {name!r} from {where}; expected one of {BACKENDS}"
        )
    return name


def current_backend() -> str:
    """The requested backend: the innermost ``use_backend``, else ``$FUSEDOPS_BACKEND``, else
    ``auto``."""
    forced = _forced.get()
    if forced is not None:
        return forced
    env = os.environ.get(ENV_VAR, "").strip().lower()
    return _check_name(env, f"${ENV_VAR}") if env else "auto"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend inside a ``with`` block (``"auto"`` restores per-device choice).

    Example::

        with fusedops.use_backend("reference"):
            out = fusedops.fused_embedding(ids, weight)
    """
    token = _forced.set(_check_name(name, "use_backend()"))
    try:
        yield
    finally:
        _forced.reset(token)


def resolve_backend(op: str, device: torch.device) -> str:
    """The concrete backend (``triton``/``cpp``/``reference``) for ``op`` on ``device``.

    Raises ``RuntimeError`` when the requested backend cannot run there. Under
    ``torch.compile`` the choice is made once, when the function is traced.
    """
    return _resolve(op, device.type)


@torch.compiler.assume_constant_result
def _resolve(op: str, device_type: str) -> str:
    device = torch.device(device_type)
    name = current_backend()
    if name == "auto":
        if device.type == "cuda":
            name = "triton"
        elif device.type == "cpu":
            name = "cpp"
        else:
            raise RuntimeError(
                f"{op}: no fused kernel for device {device}; use "
                "fusedops.use_backend('reference') to run the plain PyTorch version"
            )
    if name == "triton":
        check_triton_usable(op, device)
    elif name == "cpp":
        if device.type != "cpu":
            raise RuntimeError(
                f"{op}: backend 'cpp' runs on CPU tensors only, got a tensor on {device}"
            )
        check_cpp_usable(op)
    return name


def check_triton_usable(op: str, device: torch.device) -> None:
    """Raise unless the Triton kernels can run on ``device``."""
    try:
        from fusedops import kernels
    except ImportError as exc:
        raise RuntimeError(f"{op}: backend 'triton' needs the triton package ({exc})") from exc
    if device.type == "cpu" and not kernels.INTERPRET:
        raise RuntimeError(
            f"{op}: backend 'triton' on CPU tensors runs the kernels in Triton's interpreter, "
            "which must be switched on before fusedops.kernels is imported: set "
            "TRITON_INTERPRET=1 in the environment before importing fusedops"
        )
    if device.type not in ("cpu", "cuda"):
        raise RuntimeError(f"{op}: backend 'triton' cannot run on device {device}")


def check_cpp_usable(op: str) -> None:
    """Raise unless the compiled extension ``fusedops._C`` is importable."""
    try:
        import fusedops._C
        import fusedops.ops.cpp_fakes  # noqa: F401  (their fake impls)
    except ImportError as exc:
        raise RuntimeError(
            f"{op}: backend 'cpp' needs the compiled extension fusedops._C, which failed to "
            f"import ({exc}); reinstall with `pip install --no-build-isolation .`"
        ) from exc
