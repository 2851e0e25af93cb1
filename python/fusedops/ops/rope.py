"""Rotary position embedding (RoPE) as ``torch.library`` custom ops: validation, dispatch, autograd.

``apply_rotary`` rotates ``q [B, Hq, S, D]`` and ``k [B, Hk, S, D]`` in one launch. The user's
cos/sin (a cache ``[max_pos, R/2 or R]`` or Hugging Face's gathered ``[B or 1, S, R/2 or R]``)
are normalised here, without copies, into the kernel form: the tensor itself plus element
strides ``(batch, row, col)`` and a ``cache`` flag (row = position) vs gathered (row = s).
The custom ops ``fusedops::apply_rotary`` (functional, differentiable) and
``fusedops::apply_rotary_`` (in place) run the Triton launcher ``kernels/rope.py`` (CUDA, or CPU
through Triton's interpreter) or the C++ op ``fusedops::cpp_rope`` (CPU); a call that needs no
gradient runs the kernel directly. The ``reference`` backend runs plain PyTorch. Checks that
read tensor values (positions, ``cu_seqlens``, the addresses of in-place outputs) run inside
custom ops (``fusedops::rope_varlen_positions``, ``fusedops::rope_checked_positions``, the
in-place op), so that under ``torch.compile`` they run on the real tensors, when the graph runs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fusedops import reference
from fusedops._backend import OpBackends, resolve_backend
from fusedops.ops._common import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_dtype,
    check_index_range,
    check_same_device,
    check_tensor,
    empty_output_like,
    host_index_checks,
    unit_stride,
)
from fusedops.ops._dispatch import (
    autograd_function,
    implementation,
    needs_grad,
    run,
    runs_eagerly,
)
from fusedops.varlen import varlen_positions

OP = "apply_rotary"
OP_VARLEN = "apply_rotary_varlen"
BACKENDS = OpBackends(cpp_op="fusedops::cpp_rope")


# ------------------------------------------------------------------------------------------
# Implementations per backend (validated, normalised arguments)
# ------------------------------------------------------------------------------------------


def _rotate_triton(q, k, cos, sin, cos_strides, sin_strides, positions, offset, cache, inter,
                   rot, bwd, check, out_q, out_k) -> None:  # fmt: skip
    from fusedops.kernels.rope import rope_forward

    if positions is not None and host_index_checks(check, q.device):
        _check_position_range(OP, positions, cos.shape[0])
    rope_forward(
        q,
        k,
        cos,
        sin,
        out_q,
        out_k,
        cos_strides=tuple(cos_strides),
        sin_strides=tuple(sin_strides),
        positions=positions,
        position_offset=offset,
        cache=cache,
        interleaved=inter,
        rotary_dim=rot,
        backward=bwd,
    )


def _rotate_cpp(q, k, cos, sin, cos_strides, sin_strides, positions, offset, cache, inter,
                rot, bwd, check, out_q, out_k) -> None:  # fmt: skip
    # The C++ op range-checks positions itself (cheap on CPU: no device sync).
    torch.ops.fusedops.cpp_rope.default(
        q, k, cos, sin, list(cos_strides), list(sin_strides), positions, offset, cache, inter,
        rot, bwd, out_q, out_k,
    )  # fmt: skip


_ROTATE = {"cpp": _rotate_cpp, "triton": _rotate_triton}


def _launch(q, k, cos, sin, cos_strides, sin_strides, positions, offset, cache, inter, rot,
            bwd, check, backend, out_q, out_k) -> None:  # fmt: skip
    """Run ``backend``'s kernel, writing ``out_q``/``out_k`` (which may be ``q``/``k``)."""
    if q.numel() == 0 and (k is None or k.numel() == 0):
        return  # nothing to rotate (B, H, S or D is 0)
    implementation(OP, _ROTATE, backend)(
        q, k, cos, sin, cos_strides, sin_strides, positions, offset, cache, inter, rot, bwd,
        check, out_q, out_k,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------
# Custom ops and autograd
# ------------------------------------------------------------------------------------------


def _apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cos_strides: list[int],
    sin_strides: list[int],
    positions: torch.Tensor | None,
    position_offset: int,
    cache: bool,
    interleaved: bool,
    rotary_dim: int,
    backward: bool,
    check_indices: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation of validated ``q [B, Hq, S, D]`` / ``k [B, Hk, S, D]`` (stride(-1) == 1).

    ``cos``/``sin`` are read at ``base + b * stride_b + row * stride_row + j * stride_col``
    (``j < R/2``; row = position in cache mode, ``s`` otherwise); ``positions`` contiguous int
    ``[B or 1, S]`` or None (``position_offset + s``). ``backward`` negates sin (the gradient);
    ``check_indices`` range-checks ``positions`` against the cache first (the C++ op always
    does). Returns ``(q_out, k_out)`` laid out like the inputs; ``k_out`` is empty when ``k``
    is None.
    """
    out_q = empty_output_like(q)
    out_k = empty_output_like(k) if k is not None else q.new_empty(0)
    _launch(
        q, k, cos, sin, cos_strides, sin_strides, positions, position_offset, cache, interleaved,
        rotary_dim, backward, check_indices, backend, out_q, out_k if k is not None else None,
    )  # fmt: skip
    return out_q, out_k


def _apply_rotary_inplace(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cos_strides: list[int],
    sin_strides: list[int],
    positions: torch.Tensor | None,
    position_offset: int,
    cache: bool,
    interleaved: bool,
    rotary_dim: int,
    check_indices: bool,
    backend: str,
) -> None:
    """:func:`_apply_rotary` writing into ``q`` and ``k`` (forward rotation only).

    Checks first that ``q`` and ``k`` share no element: here, on the real tensors, so the check
    also runs under ``torch.compile`` (whose tracing sees no storage)."""
    _check_disjoint(OP, q, k)
    _launch(
        q, k, cos, sin, cos_strides, sin_strides, positions, position_offset, cache, interleaved,
        rotary_dim, False, check_indices, backend, q, k,
    )  # fmt: skip


apply_rotary_op = torch.library.custom_op("fusedops::apply_rotary", _apply_rotary, mutates_args=())
apply_rotary_inplace_op = torch.library.custom_op(
    "fusedops::apply_rotary_", _apply_rotary_inplace, mutates_args=("q", "k")
)


@apply_rotary_op.register_fake
def _(q, k, *args):
    return torch.empty_like(q), torch.empty_like(k) if k is not None else q.new_empty(0)


@apply_rotary_inplace_op.register_fake
def _(q, k, *args):
    return None


def _setup_context(ctx, inputs, output):
    _, k, cos, sin, cos_strides, sin_strides, positions, offset, cache, inter, rot, bwd, _, be = (
        inputs
    )
    ctx.save_for_backward(cos, sin, positions)
    ctx.has_k = k is not None
    ctx.args = (cos_strides, sin_strides, offset, cache, inter, rot, bwd, be)


def _backward(ctx, grad_q, grad_k):
    # grad_q: [B, Hq, S, D]; grad_k: [B, Hk, S, D] (or an empty tensor when k is None)
    cos, sin, positions = ctx.saved_tensors
    cos_strides, sin_strides, offset, cache, inter, rot, bwd, be = ctx.args
    grad_q = unit_stride(grad_q)  # an expanded upstream gradient has stride 0
    grad_k = unit_stride(grad_k) if ctx.has_k else None
    gq, gk = run(
        apply_rotary_op,
        _apply_rotary,
        needs_grad(grad_q, grad_k),  # double backward: the rotation is linear, rotate back
        grad_q, grad_k, cos, sin, cos_strides, sin_strides, positions, offset, cache, inter,
        rot, not bwd, False, be,
        autograd=_ApplyRotary,
    )  # fmt: skip
    return gq, gk if ctx.has_k else None, *([None] * 12)


apply_rotary_op.register_autograd(_backward, setup_context=_setup_context)
_ApplyRotary = autograd_function("_ApplyRotary", _apply_rotary, _setup_context, _backward)


def _checked_positions(positions: torch.Tensor, rows: int) -> torch.Tensor:
    """A copy of ``positions`` once they are checked against the cache ``[0, rows)`` (not
    while a CUDA graph is captured): the reference backend's check under ``torch.compile``,
    which cannot read tensor values while tracing."""
    if host_index_checks(True, positions.device):
        _check_position_range(OP, positions, rows)
    return positions.clone()


def _varlen_positions(
    cu_seqlens: torch.Tensor, total: int, rows: int, check_indices: bool
) -> torch.Tensor:
    """``[1, T]`` int64 position of each packed token in its sequence, ``t - cu_seqlens[i]``.

    With ``check_indices`` (and no CUDA graph being captured) first checks that ``cu_seqlens``
    starts at 0, ends at ``total`` and does not decrease (one host read), then the positions
    against the cache ``[0, rows)``. A custom op, so the checks run on the real tensors under
    ``torch.compile`` too.
    """
    op = OP_VARLEN
    check = host_index_checks(check_indices, cu_seqlens.device)
    if check:
        decreasing = (cu_seqlens[1:] < cu_seqlens[:-1]).any().to(cu_seqlens.dtype)
        first, last, bad = torch.stack((cu_seqlens[0], cu_seqlens[-1], decreasing)).tolist()
        if first != 0 or last != total:
            raise ValueError(
                f"{op}: cu_seqlens must start at 0 and end at T={total}, got {first} and {last}"
            )
        if bad:
            raise ValueError(f"{op}: cu_seqlens must be non-decreasing, got {cu_seqlens.tolist()}")
    positions = varlen_positions(cu_seqlens.contiguous(), total).unsqueeze(0)  # [1, T]
    if check:
        _check_position_range(op, positions, rows)
    return positions


checked_positions_op = torch.library.custom_op(
    "fusedops::rope_checked_positions", _checked_positions, mutates_args=()
)
varlen_positions_op = torch.library.custom_op(
    "fusedops::rope_varlen_positions", _varlen_positions, mutates_args=()
)


@checked_positions_op.register_fake
def _(positions, rows):
    return torch.empty_like(positions)


@varlen_positions_op.register_fake
def _(cu_seqlens, total, rows, check_indices):
    return cu_seqlens.new_empty((1, total), dtype=torch.int64)


# ------------------------------------------------------------------------------------------
# Validation and normalisation of the user's arguments
# ------------------------------------------------------------------------------------------


class RotaryTable(NamedTuple):
    """cos/sin in kernel form: base tensors + element strides ``(batch, row, col)``."""

    cos: torch.Tensor
    sin: torch.Tensor
    cos_strides: list[int]
    sin_strides: list[int]
    cache: bool
    rows: int  # cache: max_pos; gathered: S


def _kernel_strides(t: torch.Tensor, col_step: int) -> list[int]:
    """Element strides ``(batch, row, col)`` of a cache ``[rows, C]`` (batch 0) or of gathered
    ``[B or 1, S, C]`` (batch 0 when shared); ``col_step`` 2 reads every other column."""
    stride = t.stride()
    if len(stride) == 2:
        return [0, stride[0], stride[1] * col_step]
    return [0 if t.shape[0] == 1 else stride[0], stride[1], stride[2] * col_step]


def _normalise_table(
    op: str,
    cos: torch.Tensor,
    sin: torch.Tensor,
    batch: int,
    seq: int,
    rot: int,
    interleaved: bool,
    device: torch.device,
) -> RotaryTable:
    """Validate cos/sin and express them as strided views of themselves (never a copy).

    (a) cache ``[max_pos, R/2]``; (b) cache ``[max_pos, R]`` in Hugging Face's duplicated form
    (first ``R/2`` columns for the half layout, every other column for GPT-J); (c) gathered
    ``[B or 1, S, R]`` or ``[B or 1, S, R/2]`` (batch stride 0 when the leading dim is 1).
    """
    check_tensor(op, "cos", cos)
    check_tensor(op, "sin", sin)
    for name, t in (("cos", cos), ("sin", sin)):
        check_dtype(op, name, t, FLOAT_DTYPES)
        check_same_device(op, name, t, device)
    shape = cos.shape
    if shape != sin.shape:
        raise ValueError(
            f"{op}: cos and sin must have the same shape, got {tuple(shape)} and {tuple(sin.shape)}"
        )
    ndim = len(shape)
    if ndim not in (2, 3) or shape[-1] not in (rot // 2, rot):
        raise ValueError(
            f"{op}: cos/sin must be a cache [max_pos, {rot // 2} or {rot}] or gathered "
            f"[B or 1, S, {rot // 2} or {rot}] for rotary_dim {rot}, got {tuple(shape)}"
        )
    if ndim == 3 and (shape[0] not in (1, batch) or shape[1] != seq):
        raise ValueError(
            f"{op}: gathered cos/sin must be [{batch} or 1, {seq}, R or R/2] to match q, "
            f"got {tuple(shape)}"
        )
    if ndim == 2 and shape[0] < 1:
        raise ValueError(f"{op}: the cos/sin cache has no rows: {tuple(shape)}")
    col_step = 2 if interleaved and shape[-1] == rot and rot > 1 else 1
    cos_strides, sin_strides = _kernel_strides(cos, col_step), _kernel_strides(sin, col_step)
    return RotaryTable(cos, sin, cos_strides, sin_strides, ndim == 2, shape[-2])


def _check_rotary_dim(op: str, dim: int, rotary_dim: int | None) -> int:
    if rotary_dim is None:
        if dim % 2:
            raise ValueError(
                f"{op}: head dim D={dim} is odd; RoPE rotates feature pairs (pass an even "
                "rotary_dim < D to rotate only part of it)"
            )
        return dim
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, int):
        raise TypeError(f"{op}: rotary_dim must be an int or None, got {rotary_dim!r}")
    if rotary_dim < 2 or rotary_dim % 2 or rotary_dim > dim:
        raise ValueError(f"{op}: rotary_dim must be even and in [2, D={dim}], got {rotary_dim}")
    return rotary_dim


def _check_heads(op: str, name: str, x: torch.Tensor) -> None:
    check_tensor(op, name, x)
    check_dtype(op, name, x, FLOAT_DTYPES)
    if x.dim() != 4:
        raise ValueError(f"{op}: {name} must be [B, H, S, D], got shape {tuple(x.shape)}")


def _check_position_range(op: str, positions: torch.Tensor, rows: int) -> None:
    """IndexError naming the first position outside the cache ``[0, rows)`` (syncs CUDA)."""
    check_index_range(op, "positions contains position", positions, 0, rows)


def _check_positions(op, positions, position_offset, table, batch, seq, device, check_indices):
    """Validate positions/offset against the table; return contiguous ``[B or 1, S]`` or None."""
    if isinstance(position_offset, bool) or not isinstance(position_offset, (int, torch.SymInt)):
        raise TypeError(f"{op}: position_offset must be an int, got {position_offset!r}")
    if position_offset < 0:
        raise ValueError(f"{op}: position_offset must be >= 0, got {position_offset}")
    if not table.cache:
        if positions is not None or position_offset:
            raise ValueError(
                f"{op}: cos/sin are already gathered per token ([B or 1, S, ...]); positions "
                "and position_offset apply only to a cache [max_pos, ...]"
            )
        return None
    if positions is None:
        if check_indices and seq and position_offset + seq > table.rows:
            raise IndexError(
                f"{op}: position {position_offset + seq - 1} (position_offset "
                f"{position_offset} + sequence length {seq} - 1) outside the cos/sin cache "
                f"[0, {table.rows})"
            )
        return None
    check_tensor(op, "positions", positions)
    check_dtype(op, "positions", positions, INDEX_DTYPES)
    check_same_device(op, "positions", positions, device)
    if position_offset:
        raise ValueError(f"{op}: pass positions or position_offset, not both")
    if positions.dim() == 1:
        positions = positions.unsqueeze(0)
    if positions.dim() != 2 or positions.shape[0] not in (1, batch) or positions.shape[1] != seq:
        raise ValueError(
            f"{op}: positions must be [{batch} or 1, {seq}] (or [{seq}]) to match q, got "
            f"{tuple(positions.shape)}"
        )
    return positions.contiguous()


def _validate(op, q, k, cos, sin, positions, position_offset, rotary_dim, interleaved, checks):
    _check_heads(op, "q", q)
    device = q.device
    batch, _, seq, dim = q.shape
    if k is not None:
        _check_heads(op, "k", k)
        check_same_device(op, "k", k, device)
        if k.dtype != q.dtype:
            raise TypeError(f"{op}: k dtype {k.dtype} differs from q dtype {q.dtype}")
        k_batch, _, k_seq, k_dim = k.shape
        if (k_batch, k_seq, k_dim) != (batch, seq, dim):
            raise ValueError(
                f"{op}: k {tuple(k.shape)} must match q {tuple(q.shape)} in batch, sequence "
                "and head dim ([B, Hk, S, D] vs [B, Hq, S, D])"
            )
    if not isinstance(interleaved, bool):
        raise TypeError(f"{op}: interleaved must be a bool, got {interleaved!r}")
    rot = _check_rotary_dim(op, dim, rotary_dim)
    table = _normalise_table(op, cos, sin, batch, seq, rot, interleaved, device)
    positions = _check_positions(op, positions, position_offset, table, batch, seq, device, checks)
    return rot, table, positions


# Search steps spent proving two views of one buffer disjoint before they are taken to overlap
# (the head slices of a fused qkv tensor take a handful).
_DISJOINT_SEARCH_STEPS = 4096


def _self_overlapping(x: torch.Tensor) -> bool:
    """Whether two elements of ``x`` may share memory: a dim of size > 1 with stride 0, or
    strides that, sorted, do not each step past all that the smaller ones reach (slices,
    transposes and permutations of dense tensors always do)."""
    dims = sorted(((st, sz) for sz, st in zip(x.shape, x.stride(), strict=True) if sz > 1))
    reach = 0
    for stride, size in dims:
        if stride <= reach:
            return True
        reach += (size - 1) * stride
    return False


def _share_elements(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether views ``a`` and ``b`` of one dtype address a common element.

    Views whose byte ranges are apart share nothing. Otherwise a common element is a solution
    of ``sum_d i_d * sa_d - sum_d j_d * sb_d = (b's address - a's) / itemsize`` with indices
    inside the shapes; terms of equal stride merge into one bounded integer, and a depth-first
    search over the terms, largest stride first, settles it exactly. A search longer than
    _DISJOINT_SEARCH_STEPS, or addresses not a whole number of elements apart, count as
    sharing (conservative).
    """
    if a.numel() == 0 or b.numel() == 0:
        return False
    size = a.element_size()
    extent_a = sum((n - 1) * st for n, st in zip(a.shape, a.stride(), strict=True)) + 1
    extent_b = sum((n - 1) * st for n, st in zip(b.shape, b.stride(), strict=True)) + 1
    start_a, start_b = a.data_ptr(), b.data_ptr()
    if start_a + extent_a * size <= start_b or start_b + extent_b * size <= start_a:
        return False
    if (start_b - start_a) % size:
        return True
    bounds: dict[int, list[int]] = {}  # stride -> [least, greatest] merged index
    for x, sign in ((a, 1), (b, -1)):
        for n, st in zip(x.shape, x.stride(), strict=True):
            if n > 1 and st > 0:
                entry = bounds.setdefault(st, [0, 0])
                entry[0 if sign < 0 else 1] += sign * (n - 1)
    terms = sorted(bounds.items(), reverse=True)  # [(stride, [lo, hi])], largest stride first
    low, high = [0] * (len(terms) + 1), [0] * (len(terms) + 1)  # sums reachable by terms i..
    for i in range(len(terms) - 1, -1, -1):
        st, (lo, hi) = terms[i]
        low[i], high[i] = low[i + 1] + lo * st, high[i + 1] + hi * st
    stack = [(0, (start_b - start_a) // size)]
    steps = _DISJOINT_SEARCH_STEPS
    while stack:
        i, rest = stack.pop()
        if i == len(terms):
            if rest == 0:
                return True
            continue
        st, (lo, hi) = terms[i]
        first = max(lo, -((high[i + 1] - rest) // st))  # ceil((rest - high) / st)
        last = min(hi, (rest - low[i + 1]) // st)
        steps -= max(0, last - first + 1)
        if steps < 0:
            return True
        stack.extend((i + 1, rest - v * st) for v in range(first, last + 1))
    return False


def _check_inplace_layout(op: str, tensors: dict[str, torch.Tensor | None]) -> None:
    """ValueError unless each in-place output addresses every element once."""
    for name, x in tensors.items():
        if x is not None and _self_overlapping(x):
            raise ValueError(
                f"{op}: inplace=True needs {name} whose elements do not overlap in memory (an "
                f"element reached twice would be rotated twice), got shape {tuple(x.shape)} "
                f"and strides {tuple(x.stride())}; use inplace=False"
            )


def _check_disjoint(op: str, q: torch.Tensor, k: torch.Tensor | None) -> None:
    """ValueError if in-place ``q`` and ``k`` share an element (reads real addresses)."""
    if k is not None and _share_elements(q, k):
        raise ValueError(
            f"{op}: inplace=True needs q and k in disjoint memory, but they share elements "
            "(q is k, or overlapping views of one buffer; a layout too irregular to prove "
            "disjoint counts as overlapping); use inplace=False, or k=None to rotate one tensor"
        )


def _kernel_layout(op: str, x: torch.Tensor, inplace: bool, name: str) -> torch.Tensor:
    if x.stride(-1) == 1 or x.numel() == 0:
        return x
    if inplace:
        raise ValueError(
            f"{op}: inplace=True needs {name} with a contiguous last dim (stride(-1) == 1), "
            f"got strides {x.stride()}"
        )
    return x.contiguous()


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    positions: torch.Tensor | None = None,
    position_offset: int = 0,
    interleaved: bool = False,
    rotary_dim: int | None = None,
    inplace: bool = False,
    check_indices: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotary position embedding of ``q`` and ``k`` in one launch.

    Pairs ``(x[j], x[j + R/2])`` (half layout, NeoX/Llama ``rotate_half``) or
    ``(x[2j], x[2j+1])`` (``interleaved=True``, GPT-J) of the first ``R = rotary_dim`` features
    are rotated by the angle of frequency ``j`` at the token's position:
    ``y1 = x1 * c - x2 * s``, ``y2 = x2 * c + x1 * s``; features ``[R, D)`` are copied.

    Args:
        q: ``[B, Hq, S, D]`` fp32/fp16/bf16, any strides with ``stride(-1) == 1`` (so
            ``[B, S, H, D].transpose(1, 2)`` views work).
        k: ``[B, Hk, S, D]`` (``Hk`` may differ from ``Hq``: GQA/MQA), same dtype, or None.
        cos, sin: a cache ``[max_pos, R/2]`` or ``[max_pos, R]`` (Hugging Face's duplicated
            form), indexed by position; or gathered per token as Hugging Face passes them,
            ``[B or 1, S, R]`` or ``[B or 1, S, R/2]``. Any float dtype; read in place.
        positions: int32/int64 ``[B or 1, S]`` (or ``[S]``) positions into a cache.
        position_offset: first position when ``positions`` is None (KV-cache decode).
        interleaved: GPT-J pairs instead of the half layout.
        rotary_dim: ``R`` (even, ``<= D``; default ``D``).
        inplace: write into ``q``/``k`` (only when no gradient is needed) and return them.
            Each must address every element once (no stride-0 or self-overlapping views) and
            ``q`` and ``k`` must share no element (``k`` may be another head slice of the same
            fused buffer, not the same heads); ``ValueError`` otherwise, on every backend.
        check_indices: range-check positions against the cache (``IndexError``); on CUDA the
            check syncs the device, and is skipped while a CUDA graph is captured. Unchecked
            out-of-range positions are masked by the kernels (rotation by angle 0).
    Returns:
        ``(q_out, k_out)`` in the input dtype (math in fp32), laid out like the inputs;
        ``k_out`` is None when ``k`` is None. ``inplace=False`` leaves the inputs untouched.
    Raises:
        TypeError / ValueError for bad dtypes, shapes, devices or options; IndexError for
        positions outside the cache; RuntimeError if the requested backend cannot run.
    """
    return _rotary(
        OP, q, k, cos, sin, positions, position_offset, interleaved, rotary_dim, inplace,
        check_indices,
    )  # fmt: skip


def _rotary(
    op, q, k, cos, sin, positions, position_offset, interleaved, rotary_dim, inplace,
    check_indices,
):  # fmt: skip
    """:func:`apply_rotary` with errors naming ``op``."""
    rot, table, positions = _validate(
        op, q, k, cos, sin, positions, position_offset, rotary_dim, interleaved, check_indices
    )
    if not isinstance(inplace, bool):
        raise TypeError(f"{op}: inplace must be a bool, got {inplace!r}")
    if needs_grad(cos, sin):
        raise ValueError(
            f"{op}: cos/sin require grad, but they are treated as constants (no gradient "
            "flows to them); pass cos.detach() / sin.detach()"
        )
    grad = needs_grad(q, k)
    if inplace and grad:
        raise ValueError(
            f"{op}: inplace=True cannot be used when q or k requires grad (autograd needs the "
            "inputs); use inplace=False or run under torch.no_grad()"
        )
    backend = resolve_backend(op, q.device, BACKENDS)
    if inplace:
        _check_inplace_layout(op, {"q": q, "k": k})
    if backend == "reference":
        eager = runs_eagerly()
        if inplace and eager:
            # (The kernel backends check in their in-place op, when it runs; tracing has no
            # addresses, so a compiled reference call is not checked.)
            _check_disjoint(op, q, k)
        if check_indices and positions is not None:
            if eager:
                if host_index_checks(check_indices, q.device):
                    _check_position_range(op, positions, table.rows)
            else:
                positions = checked_positions_op(positions, table.rows)
        out_q, out_k = reference.apply_rotary(
            q,
            k,
            table.cos,
            table.sin,
            positions=positions,
            position_offset=position_offset,
            interleaved=interleaved,
            rotary_dim=rot,
        )
        if not inplace:
            return out_q, out_k
        q.copy_(out_q)
        if k is not None:
            k.copy_(out_k)
        return q, k
    q = _kernel_layout(op, q, inplace, "q")
    k = None if k is None else _kernel_layout(op, k, inplace, "k")
    args = (
        q,
        k,
        table.cos,
        table.sin,
        table.cos_strides,
        table.sin_strides,
        positions,
        position_offset,
        table.cache,
        interleaved,
        rot,
    )
    if inplace:
        run(apply_rotary_inplace_op, _apply_rotary_inplace, False, *args, check_indices, backend)
        return q, k
    out_q, out_k = run(
        apply_rotary_op,
        _apply_rotary,
        grad,
        *args,
        False,
        check_indices,
        backend,
        autograd=_ApplyRotary,
    )
    return out_q, None if k is None else out_k


def apply_rotary_varlen(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    interleaved: bool = False,
    rotary_dim: int | None = None,
    inplace: bool = False,
    check_indices: bool = True,
) -> torch.Tensor:
    """RoPE on packed variable-length sequences: positions restart at 0 per sequence.

    Args:
        x: ``[T, H, D]`` packed tokens (stride(-1) == 1), fp32/fp16/bf16.
        cos, sin: a cache ``[max_pos, R/2 or R]``.
        cu_seqlens: int32/int64 ``[N + 1]`` sequence boundaries, ``cu_seqlens[0] = 0``,
            non-decreasing, ``cu_seqlens[-1] = T``; token ``t`` of sequence ``i`` has position
            ``t - cu_seqlens[i]`` (computed on the device with ``searchsorted``, no sync).
        interleaved, rotary_dim, inplace: as in :func:`apply_rotary`.
        check_indices: check ``cu_seqlens`` and the positions against the cache (syncs a CUDA
            device; skipped while a CUDA graph is captured, and run when the op runs under
            ``torch.compile``); with False they are trusted and out-of-cache positions are
            masked by the kernels.
    Returns:
        ``[T, H, D]`` (``x`` itself when ``inplace``).
    """
    op = OP_VARLEN
    check_tensor(op, "x", x)
    check_dtype(op, "x", x, FLOAT_DTYPES)
    if x.dim() != 3:
        raise ValueError(f"{op}: x must be [T, H, D] packed tokens, got shape {tuple(x.shape)}")
    check_tensor(op, "cu_seqlens", cu_seqlens)
    check_dtype(op, "cu_seqlens", cu_seqlens, INDEX_DTYPES)
    check_same_device(op, "cu_seqlens", cu_seqlens, x.device)
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(
            f"{op}: cu_seqlens must be [N + 1] with N >= 1, got shape {tuple(cu_seqlens.shape)}"
        )
    check_tensor(op, "cos", cos)
    if cos.dim() != 2:
        raise ValueError(
            f"{op}: cos/sin must be a cache [max_pos, R/2 or R], got shape {tuple(cos.shape)}"
        )
    if inplace is True:
        _check_inplace_layout(op, {"x": x})
    positions = run(
        varlen_positions_op, _varlen_positions, False, cu_seqlens, x.shape[0], cos.shape[0],
        bool(check_indices),
    )  # fmt: skip
    view = x.permute(1, 0, 2).unsqueeze(0)  # [1, H, T, D], a view
    out, _ = _rotary(
        op, view, None, cos, sin, positions, 0, interleaved, rotary_dim, inplace,
        check_indices=False,  # checked above, with this op's name
    )  # fmt: skip
    return x if inplace else out.squeeze(0).permute(1, 0, 2)
