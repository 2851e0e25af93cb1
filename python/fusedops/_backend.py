"""Backend selection: which implementation runs a fused op.

Per call, ``auto`` picks an op's Triton kernels for CUDA tensors and its ``cpp`` backend for CPU
tensors, as the op's :class:`OpBackends` says (the INT8 embedding has no Triton kernel and runs
its ``fusedops._C`` op on CUDA tensors too; attention's ``cpp`` backend is PyTorch's SDPA).
``use_backend(...)`` (a context manager) or the environment variable ``FUSEDOPS_BACKEND`` force
one of ``triton``, ``cpp`` or ``reference``. There is no silent fallback: a forced backend that
cannot run the call raises an error that says why.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "triton", "cpp", "reference")
ENV_VAR = "FUSEDOPS_BACKEND"

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fusedops_backend", default=None
)


@dataclasses.dataclass(frozen=True)
class OpBackends:
    """What an op's compiled backends can run.

    ``triton``: the op has Triton kernels (``auto`` runs them on CUDA tensors).
    ``cpp_devices``: the device types its ``cpp`` backend runs on (``auto`` picks it there,
    except for CUDA tensors when the op has Triton kernels).
    ``cpp_op``: the ``fusedops._C`` op the ``cpp`` backend calls (checked to be built, with a
    CUDA kernel for CUDA tensors), or None when it needs no extension (attention's SDPA).
    """

    triton: bool = True
    cpp_devices: tuple[str, ...] = ("cpu",)
    cpp_op: str | None = None


TRITON_AND_CPP = OpBackends()


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


def resolve_backend(op: str, device: torch.device, backends: OpBackends = TRITON_AND_CPP) -> str:
    """The concrete backend (``triton``/``cpp``/``reference``) for ``op`` on ``device``.

    Raises ``RuntimeError`` when the requested backend cannot run there. Under
    ``torch.compile`` the choice is made once, when the function is traced.
    """
    return _resolve(op, device.type, backends.triton, backends.cpp_devices, backends.cpp_op)


def _resolve(
    op: str, device_type: str, triton: bool, cpp_devices: tuple[str, ...], cpp_op: str | None
) -> str:
    return _choose(current_backend(), op, device_type, triton, cpp_devices, cpp_op)


# torch.compile evaluates the choice once, when tracing, as a constant: what
# ``torch.compiler.assume_constant_result`` does by setting this attribute. The decorator
# imports torch._dynamo (seconds) to set it, so it is set directly and ``import fusedops``
# stays light; tests/test_backend.py checks the decorator still sets exactly this attribute.
_resolve._dynamo_marked_constant = True  # type: ignore[attr-defined]


@functools.cache  # successes only: a call that raised checks again next time
def _choose(
    name: str,
    op: str,
    device_type: str,
    triton: bool,
    cpp_devices: tuple[str, ...],
    cpp_op: str | None,
) -> str:
    device = torch.device(device_type)
    if name == "auto":
        if device_type == "cuda" and triton:
            name = "triton"
        elif device_type in cpp_devices:
            name = "cpp"
        else:
            raise RuntimeError(
                f"{op}: no fused kernel for device {device}; use "
                "fusedops.use_backend('reference') to run the plain PyTorch version"
            )
    if name == "triton":
        if not triton:
            raise RuntimeError(
                f"{op}: there is no Triton kernel for {op}; use the 'auto' or 'cpp' backend "
                "(the C++/CUDA extension) or 'reference'"
            )
        check_triton_usable(op, device)
    elif name == "cpp":
        if device_type not in cpp_devices:
            kinds = " and ".join(d.upper() for d in cpp_devices)
            raise RuntimeError(
                f"{op}: backend 'cpp' runs on {kinds} tensors only, got a tensor on {device}"
            )
        if cpp_op is not None:
            check_cpp_usable(op, cpp_op, device_type)
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


def check_cpp_usable(op: str, cpp_op: str, device_type: str = "cpu") -> None:
    """Raise unless ``fusedops._C`` is importable and has ``cpp_op`` (``"fusedops::name"``)
    with a kernel for ``device_type``."""
    try:
        import fusedops._C
        import fusedops.ops.cpp_fakes  # noqa: F401  (their fake impls)
    except ImportError as exc:
        raise RuntimeError(
            f"{op}: backend 'cpp' needs the compiled extension fusedops._C, which failed to "
            f"import ({exc}); reinstall with `pip install --no-build-isolation .`"
        ) from exc
    if not hasattr(torch.ops.fusedops, cpp_op.split("::")[-1]):
        raise RuntimeError(
            f"{op}: the installed fusedops._C has no {cpp_op} op (built from older sources); "
            "rebuild with `pip install --no-build-isolation --no-deps -e .`"
        )
    if device_type == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(cpp_op, "CUDA"):
        raise RuntimeError(
            f"{op}: fusedops._C was built without CUDA, so CUDA tensors cannot run {cpp_op}; "
            "rebuild with a CUDA torch and nvcc (FUSEDOPS_CUDA=1), or use "
            "fusedops.use_backend('reference')"
        )
