"""Helpers shared by the op wrappers: output allocation and argument checks."""

from __future__ import annotations

import math
import numbers
import os

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
POISON_ENV = "FUSEDOPS_POISON_OUTPUTS"
# Read once, when fusedops is imported (tests set it first): outputs are then NaN-filled, so an
# element a kernel forgets to write fails the comparison instead of passing by luck.
POISON_OUTPUTS = os.environ.get(POISON_ENV) == "1"


def empty_output(shape: tuple[int, ...] | list[int], dtype: torch.dtype, device: torch.device):
    """An uninitialised output (NaN-filled under ``$FUSEDOPS_POISON_OUTPUTS=1``)."""
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def empty_output_like(x: torch.Tensor) -> torch.Tensor:
    """:func:`empty_output` with ``x``'s shape, dtype, device and layout (strides of a dense
    tensor are kept, so e.g. ``[B, S, H, D]`` views stay that way)."""
    out = torch.empty_like(x)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def unit_stride(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when ``stride(-1) == 1`` (the layout the kernels read), else a contiguous
    copy (e.g. of an expanded upstream gradient, whose strides are 0)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def check_tensor(op: str, name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_dtype(op: str, name: str, t: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{op}: {name} must have dtype in ({names}), got {t.dtype}")


def check_same_device(op: str, name: str, t: torch.Tensor, device: torch.device) -> None:
    if t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device} but the other inputs are on {device}")


def check_index_range(op: str, what: str, t: torch.Tensor, low: int, high: int | None) -> None:
    """Raise IndexError naming the first element of ``t`` outside ``[low, high)``.

    ``high=None`` checks only the lower bound. Forces a device sync on CUDA tensors.
    """
    if t.numel() == 0:
        return
    bad = t < low if high is None else (t < low) | (t >= high)
    if bool(bad.any()):
        value = int(t.reshape(-1)[bad.reshape(-1).nonzero()[0, 0]])
        bound = f"[{low}, {high})" if high is not None else f"[{low}, inf)"
        raise IndexError(f"{op}: {what} {value} outside {bound}")


def check_real_scalar(
    op: str, name: str, value: object, *, positive: bool = False
) -> float | torch.SymFloat | torch.SymInt:
    """``value`` as a Python float, or a symbolic number passed through.

    Accepts Python and NumPy real numbers (``bool`` excluded) and 0-d real tensors outside
    tracing (read with ``.item()``, a host sync on CUDA). Plain numbers must be finite (and
    ``> 0`` with ``positive``): ValueError naming ``op`` and ``name`` otherwise. A ``SymInt`` /
    ``SymFloat`` (``torch.compile(dynamic=True)`` traces sizes symbolically, so e.g. a default
    ``sqrt(D)`` is one) is returned unchanged: it comes from tensor sizes, so it is finite, and
    ``positive`` is asserted with ``torch._check``.
    """
    if isinstance(value, (torch.SymInt, torch.SymFloat)):
        if positive:
            torch._check(value > 0, lambda: f"{op}: {name} must be > 0")
        return value
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        if torch.compiler.is_compiling():
            raise TypeError(
                f"{op}: {name} must be a Python number under torch.compile, got a tensor"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    # Comparisons, not math.isfinite: under torch.compile(dynamic=True) dynamo cannot trace
    # math.isfinite even on a constant ("torch.* op returned non-Tensor"), and it sees a
    # SymFloat as a float (the isinstance test above is False while tracing).
    if not -math.inf < value < math.inf or (positive and value <= 0):
        kind = "finite number > 0" if positive else "finite number"
        raise ValueError(f"{op}: {name} must be a {kind}, got {value}")
    return value


def host_index_checks(check_indices: bool, device: torch.device) -> bool:
    """Whether an op runs its host-side index checks (which read the indices on the host).

    ``check_indices``, except on a CUDA device while the current stream is capturing a CUDA
    graph: a capture may not synchronize, and a replay would never run a host check anyway. The
    kernels then mask out-of-range indices as they do with ``check_indices=False`` (the rule
    the README states for CUDA graphs).
    """
    if not check_indices:
        return False
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def forbid_double_backward(op: str) -> None:
    """Raise in a backward formula run with ``create_graph=True`` (grad mode on): the ops'
    backward kernels have no derivative of their own, so a graph of the backward would fail
    later, at the second backward, with a message that names no op."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"{op}: double backward is not supported (backward was called with "
            "create_graph=True); fusedops.reference gives higher-order gradients"
        )
